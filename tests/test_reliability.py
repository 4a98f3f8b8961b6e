"""Faults (kills, signals, full disks, NaN weights, bit rot), bad input of every kind, and safe
loading. Each case of issue #13 ("Reliability II") is a test here or in test_checkpoints.py."""
import errno
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, train_cli
from vhred import checkpoint, loading, sources
from vhred.config import ConfigError, load
from vhred.errors import InputError, TrainingError
from vhred.sources import DataError
from vhred.train import RolledBack, train

TINY = os.path.join(ROOT, "configs", "tiny.yaml")


def quiet(*_):
    pass


def one_line_exit(main, argv, capsys) -> tuple[int, str]:
    """Run a command's main in this process: (exit code, its stderr), which must be one line."""
    capsys.readouterr()   # what came before is not this command's
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return exit_info.value.code, err


def logged_steps(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    steps = []
    for line in open(path):
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:
            pass   # a line cut by the kill
    return steps


def wait_until(condition, proc, limit: float = 300):
    """Poll until condition() holds; fail if the process ends first or the limit passes."""
    start = time.time()
    while not condition():
        assert proc.poll() is None, f"the run ended first (exit {proc.returncode})"
        assert time.time() - start < limit, "the run made no progress"
        time.sleep(0.05)


# --- faults ------------------------------------------------------------------------------------

@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_sigkill_at_random_moments_never_loses_more_than_a_save_interval(cli_args, tmp_path):
    run_dir = tmp_path / "runs" / "tiny-vhred"
    rng = random.Random(0)
    saved = 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}   # every line the run printed is in the pipe when it dies
    for kill in range(4):
        proc = subprocess.Popen(train_cli(*cli_args, "epochs=1000"), cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env)
        # the moment is set by the run's progress, not by the clock (a busy machine only makes
        # it later): a logged step between saves or on one (save_every=5), the first before any save
        target = len(logged_steps(run_dir)) + rng.randint(1, 9)   # counted in new lines of this run
        wait_until(lambda: len(logged_steps(run_dir)) >= target, proc)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        if saved:   # it resumed where the last save left it
            assert f"resuming {run_dir} at step {saved}" in out
        reached = max(logged_steps(run_dir), default=0)
        last = run_dir / "last.pt"
        # whole and readable after every kill (none yet only if killed before the first save)
        state = checkpoint.load(str(last)) if last.exists() else {"progress": {"step": 0}}
        assert state["progress"]["step"] >= saved                         # never goes back
        assert reached - state["progress"]["step"] <= 5                   # loses at most save_every steps
        saved = state["progress"]["step"]
    done = subprocess.run(train_cli(*cli_args, f"max_steps={saved + 6}"), cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and (f"at step {saved}" in done.stdout or not saved)
    assert not [n for n in os.listdir(run_dir) if ".tmp" in n]
    model, _, _ = loading.load_model(str(run_dir / "best.pt"))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_sigterm_saves_first(cli_args, tmp_path):
    run_dir = tmp_path / "runs" / "tiny-vhred"
    proc = subprocess.Popen(train_cli(*cli_args, "epochs=1000", "save_every=100000"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: len(logged_steps(run_dir)) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    assert checkpoint.load(str(run_dir / "last.pt"))["progress"]["step"] >= 3


class FullDisk(io.FileIO):
    """A file on a disk with `room` bytes left: a write beyond fails with ENOSPC, as on a full
    tmpfs. torch's zip writer turns that into a RuntimeError of its own ("unexpected pos")."""
    room = 50_000

    def write(self, b):
        if self.tell() + memoryview(b).nbytes > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(b)


def test_a_full_disk_while_a_new_run_writes_its_tokenizer_leaves_no_torn_file(tiny_cfg, monkeypatch, capsys):
    """It said "No space left on device (data/processed/.../tokenizer.model)", the source, and left
    a truncated tokenizer.model in the run folder."""
    import builtins
    from vhred import files, train as train_mod   # the run folder's small files are written by files.write_bytes
    cfg = tiny_cfg("max_steps=2", "name=tokfull")
    small = type("Small", (FullDisk,), {"room": 100})
    monkeypatch.setattr(files, "open", lambda path, mode="r", *a, **k: small(path, mode) if "w" in mode and "tokfull" in path
                        else builtins.open(path, mode, *a, **k), raising=False)
    code, err = one_line_exit(train_mod.main, ["--config", TINY, f"data_dir={cfg.data_dir}", f"out_dir={cfg.out_dir}",
                                               "name=tokfull", "max_steps=2"], capsys)
    run = os.path.join(cfg.out_dir, "tokfull")
    assert code == 1 and f"No space left on device ({run}/tokenizer.model)" in err, err
    assert not [n for n in os.listdir(run) if n.startswith("tokenizer.model")]


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tiny_cfg, monkeypatch, capsys):
    from vhred import train as train_mod
    cfg = tiny_cfg("max_steps=10", "name=disk")
    train(cfg, log=quiet)
    last = os.path.join(cfg.out_dir, "disk", "last.pt")
    before = open(last, "rb").read()
    monkeypatch.setattr(checkpoint, "open", lambda path, mode: FullDisk(path, mode), raising=False)
    code, err = one_line_exit(train_mod.main, ["--config", TINY, f"data_dir={cfg.data_dir}", f"out_dir={cfg.out_dir}",
                                               "name=disk", "max_steps=20"], capsys)
    assert code == 1 and "No space left on device" in err and f"{last} is intact" in err
    assert open(last, "rb").read() == before and checkpoint.load(last)["progress"]["step"] == 10
    assert not [n for n in os.listdir(os.path.dirname(last)) if ".tmp" in n]


SAVE_TWICE = """
import os, sys, torch
from vhred import checkpoint, loading
path = os.path.join(sys.argv[1], "last.pt")
checkpoint.save({"model": {"w": torch.zeros(100_000)}}, path)        # 400 KB: fits
before = open(path, "rb").read()
try:
    checkpoint.save({"model": {"w": torch.ones(200_000)}}, path)     # 800 KB more: does not
except OSError as e:
    print(e.errno, e.filename == path, open(path, "rb").read() == before, os.listdir(sys.argv[1]))
"""


@pytest.mark.slow   # a subprocess in a user namespace: a real 1 MB tmpfs fills up
def test_a_real_full_tmpfs_gives_enospc_and_keeps_the_old_file(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not shutil.which("unshare"):
        pytest.skip("no unshare here")
    script = f'mount -t tmpfs -o size=1m tmpfs "{mnt}" && "{sys.executable}" -c "$0" "{mnt}"'
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script, SAVE_TWICE], cwd=ROOT, capture_output=True, text=True)
    if "mount" in r.stderr or "unshare" in r.stderr:
        pytest.skip(f"no user namespaces with tmpfs here ({r.stderr.strip()[:80]})")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.split() == [str(errno.ENOSPC), "True", "True", "['last.pt']"]


def test_an_out_dir_that_is_a_file_is_one_line_that_claims_no_checkpoint(tiny_cfg, tmp_path, capsys):
    from vhred import train as train_mod
    cfg = tiny_cfg()
    (tmp_path / "a-file").write_text("not a folder")
    code, err = one_line_exit(train_mod.main, ["--config", TINY, f"data_dir={cfg.data_dir}",
                                               f"out_dir={tmp_path / 'a-file'}", "max_steps=2"], capsys)
    assert code == 1 and "Not a directory" in err and "intact" not in err


# --- non-finite weights ------------------------------------------------------------------------

def poison(monkeypatch, when):
    """Make AdamW put inf into a GRU weight after its n-th step whenever when(n), as an overflowing
    update would (lr=inf did this before the config refused it); return the list of checkpoints
    written, True for each whose weights were all finite."""
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if when(calls["n"]):
            with torch.no_grad():
                self.param_groups[0]["params"][1].view(-1)[0] = float("inf")
        return out
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    finite, real_save = [], checkpoint.save

    def save(state, path):
        finite.append(all(bool(torch.isfinite(t).all()) for t in state["model"].values()))
        real_save(state, path)
    monkeypatch.setattr(checkpoint, "save", save)
    return finite


def test_weights_that_turn_inf_roll_back_to_last_pt_and_the_run_goes_on(tiny_cfg, monkeypatch):
    clean = train(tiny_cfg("max_steps=15", "save_every=5", "name=clean"), log=quiet)
    finite = poison(monkeypatch, lambda n: n == 7)
    lines = []
    run = train(tiny_cfg("max_steps=15", "save_every=5", "name=poisoned"), log=lines.append)
    assert any("weights not finite; rolling back to" in line for line in lines)
    assert finite and all(finite)                              # no checkpoint ever held the inf
    assert (run.progress.step, run.progress.batch_pos) == (15, 15)
    # the replay from last.pt (same weights, optimiser, RNG and batches) is the run without the fault
    for a, b in zip(clean.model.parameters(), run.model.parameters()):
        assert torch.equal(a, b)


def test_weights_that_keep_turning_inf_stop_the_run_with_last_pt_good(tiny_cfg, monkeypatch):
    finite = poison(monkeypatch, lambda n: n >= 7)
    cfg = tiny_cfg("max_steps=40", "save_every=5", "name=doomed")
    with pytest.raises(TrainingError, match="NaN/inf .*last.pt holds the last good state"):
        train(cfg, log=quiet)
    assert finite and all(finite)
    state = checkpoint.load(os.path.join(cfg.out_dir, "doomed", "last.pt"))
    assert state["progress"]["step"] == 5 and all(torch.isfinite(t).all() for t in state["model"].values())


def test_a_checkpoint_of_non_finite_weights_is_never_written(tiny_cfg):
    run = train(tiny_cfg("max_steps=5", "save_every=5", "name=guarded"), log=quiet)
    files = {n: open(os.path.join(run.dir, n), "rb").read() for n in ("last.pt", "best.pt")}
    with torch.no_grad():
        run.model.embed.weight[5, 0] = float("nan")   # a NaN the loss might not show
    run.save("best.pt", resumable=False)              # not written
    with pytest.raises(RolledBack):                   # last.pt: not written, the run goes back to it
        run.save("last.pt")
    assert run.weights_finite() and run.progress.step == 5
    assert {n: open(os.path.join(run.dir, n), "rb").read() for n in files} == files


@pytest.mark.parametrize("override", ["lr=nan", "lr=inf", "kl_max=nan", "kl_max=inf", "grad_clip=nan",
                                      "free_bits=inf", "seed=1e23", "vocab_size=1e20", "seed=99999999999",
                                      "vocab_size=15", "name=a/b"])
def test_the_config_refuses_non_finite_and_out_of_range_numbers(override):
    with pytest.raises(ConfigError):
        load(TINY, [override])


@pytest.mark.parametrize("text,message", [
    ("lr: 0.1\n5: 3\n", "unknown config key '5'"),
    ("lr: 0.1\nbatch_size: 4\nlr: 0.2\n", "key 'lr' is given twice \\(lines 1 and 3\\)"),
    ("arch:\n  z_dim: 3\n  z_dim: 4\n", "key 'z_dim' is given twice"),
    ("arch:\n  z_dim: 3\nz_dim: 4\n", "key 'z_dim' is given twice, at the top level and under arch"),
    ("lr: .nan\n", "lr must be a finite number"),
    ('name: "a\\0b"\n', "NUL"),
    (b"name: caf\xe9\n", "not UTF-8"),
    ("[1, 2]\n", "key: value"),
])
def test_bad_config_files_are_refused_before_any_data_is_prepared(tmp_path, capsys, text, message):
    from vhred import train as train_mod
    f = tmp_path / "c.yaml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, err = one_line_exit(train_mod.main, ["--config", str(f), f"data_dir={tmp_path / 'data'}"], capsys)
    assert code == 2 and __import__("re").search(message, err), err
    assert not (tmp_path / "data").exists()   # refused first, not after preparing the corpus


def test_extreme_but_legal_settings_train_or_say_why(tiny_cfg, tmp_path):
    with pytest.raises(DataError, match="cannot build a vocabulary of vocab_size=16 .*raise vocab_size"):
        train(tiny_cfg("vocab_size=16", "name=v16"), log=quiet)
    processed = os.path.join(tiny_cfg().data_dir, "processed")
    assert not [n for n in os.listdir(processed) if ".tmp" in n]   # the failed preparation left nothing
    big = train(tiny_cfg("vocab_size=20000", "max_steps=2", "name=big"), log=quiet)   # the corpus gives fewer
    assert big.vocab_size < 20000
    for extreme in ("max_utt_len=1", "batch_size=1", "max_context=1"):
        run = train(tiny_cfg(extreme, "max_steps=3", f"name={extreme.split('=')[0]}"), log=quiet)
        assert run.progress.step == 3 and run.weights_finite()


# --- bad data ----------------------------------------------------------------------------------

def make_zip(path, members: dict):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return str(path)


def test_archives_with_unsafe_paths_bad_bytes_or_changed_files_are_refused(tmp_path, dailydialog_zip):
    evil = make_zip(tmp_path / "evil.zip", {"../../outside/dialogues_train.txt": "Hi . __eou__ Yo . __eou__\n"})
    with pytest.raises(DataError, match="unsafe path"):
        sources.read_dailydialog(evil)
    assert not (tmp_path.parent / "outside").exists()
    official = sources._split_bytes(dailydialog_zip)
    bad_bytes = make_zip(tmp_path / "bytes.zip", {**{f"{s}/dialogues_{s}.txt": d for s, d in official.items()},
                                                  "train/dialogues_train.txt": b"caf\xe9 __eou__ ok __eou__\n"})
    with pytest.raises(DataError, match="not UTF-8"):
        sources.read_dailydialog(bad_bytes)
    changed = dict(official)
    changed["test"] = official["test"].replace(b" . ", b" ! ", 1)   # same counts, other text
    assert changed["test"] != official["test"]
    manifest = sources.standin_manifest(dailydialog_zip)   # the stand-in is checked against its own
    keep = {sources.STANDIN_MANIFEST: json.dumps(manifest)} if manifest else {}
    tampered = make_zip(tmp_path / "changed.zip", {**{f"{s}/dialogues_{s}.txt": d for s, d in changed.items()}, **keep})
    with pytest.raises(DataError, match="differs from the official DailyDialog release" if not manifest
                       else "differs from the stand-in's standin.json"):
        sources.read_dailydialog(tampered)


def test_jsonl_with_bad_bytes_empty_short_and_huge_dialogues(tiny_cfg, tmp_path, capsys):
    from vhred.dataset import DialogueData, prepare
    path = tmp_path / "odd.jsonl"
    good = [json.dumps({"dialog": [f"hello number {i} .", f"hi there {i} !", "bye ."]}) for i in range(60)]
    huge = json.dumps({"dialog": ["word " * 20000, "short answer ."]})
    lines = [l.encode() for l in good] + [b'{"dialog": ["caf\xe9", "x"]}', b'{"dialog": []}',
                                          b'{"dialog": ["only one"]}', huge.encode(), b"[1, 2]"]
    path.write_bytes(b"\n".join(lines) + b"\n")
    folder = prepare(tiny_cfg(f"data={path}", "max_dialogues=0", "vocab_size=60"), log=lambda *_: None)
    err = capsys.readouterr().err
    for lineno in (61, 62, 63, 65):
        assert f"odd.jsonl: line {lineno}: skipped" in err
    meta = json.load(open(os.path.join(folder, "meta.json")))
    assert sum(meta["dialogues"].values()) == 61 and meta["scan"]["skipped_lines"] == 4
    for split in ("train", "validation", "test"):
        data = DialogueData(folder, split)
        assert len(data) == 0 or data.max_len.max() <= 16   # the huge utterance was cut


def test_zip_members_are_size_checked_from_the_directory_before_reading(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "big.zip", {"train/dialogues_train.txt": b"Hi . __eou__ " * 20_000})   # 260 KB
    monkeypatch.setattr(sources, "MAX_MEMBER_BYTES", 100_000)   # as a 300 MB member is to the real 64 MB
    read = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: read.append(a) or real_open(self, *a, **k))
    with pytest.raises(DataError, match="unpacks to more than"):
        sources.read_dailydialog(archive)
    assert not read   # refused from the zip directory: not one byte of it unpacked


def test_jsonl_lines_nested_too_deep_or_with_a_lone_surrogate_are_skipped(tiny_cfg, tmp_path, capsys):
    from vhred.dataset import prepare
    path = tmp_path / "odd.jsonl"
    good = [json.dumps({"dialog": [f"hello number {i} .", f"hi there {i} !", "bye ."]}) for i in range(60)]
    nested = '{"dialog": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path.write_text("\n".join(good + [nested, '{"dialog": ["\\ud800 hi", "ok"]}']) + "\n")
    folder = prepare(tiny_cfg(f"data={path}", "max_dialogues=0", "vocab_size=60"), log=quiet)
    err = capsys.readouterr().err
    assert "line 61: skipped: JSON nested too deeply" in err and "line 62: skipped: an utterance holds a lone surrogate" in err
    assert json.load(open(os.path.join(folder, "meta.json")))["scan"]["skipped_lines"] == 2
    assert not [n for n in os.listdir(os.path.dirname(folder)) if ".tmp" in n]


def flip(path: str, n: int, seed: int = 0):
    """Invert n bytes in the middle of a file, as bit rot would."""
    data = bytearray(open(path, "rb").read())
    at = random.Random(seed).randrange(len(data) // 4, len(data) // 2)
    for i in range(at, at + n):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_a_corrupt_data_cache_is_detected_and_built_again(tiny_cfg, tmp_path):
    from vhred.dataset import CACHE_FILES, DialogueData, prepare
    cfg = tiny_cfg(f"data_dir={tmp_path / 'data'}")
    folder = prepare(cfg, log=quiet)
    good = {rel: open(os.path.join(folder, rel), "rb").read() for rel in CACHE_FILES}
    for rel in ("train/data.arrow", "tokenizer.model"):
        flip(os.path.join(folder, rel), 64)
        lines = []
        assert prepare(cfg, log=lines.append) == folder
        assert f"{rel} changed since it was built" in lines[0] and any("preparing" in line for line in lines[1:])
        assert {r: open(os.path.join(folder, r), "rb").read() for r in CACHE_FILES} == good   # rebuilt the same
    with open(os.path.join(folder, "meta.json"), "w") as f:
        f.write("{ not json")
    lines = []
    prepare(cfg, log=lines.append)
    assert "is unreadable" in lines[0]
    data = DialogueData(folder, "train")
    assert sum(len(data.batch(b).turns) for b in data.batches(8)) == len(data)
    lines = []
    prepare(cfg, log=lines.append)
    assert lines == []   # an intact cache is reused silently


def test_folders_of_crashed_preparations_are_removed(tiny_cfg, tmp_path):
    from vhred.dataset import prepare
    processed = tmp_path / "data" / "processed"
    dead, alive, old = processed / "x-1.tmp4194305", processed / f"y-2.tmp{os.getpid()}", processed / "z-3.tmp"
    for folder in (dead, alive, old):
        (folder / "train").mkdir(parents=True)
    prepare(tiny_cfg(f"data_dir={tmp_path / 'data'}"), log=quiet)
    assert not dead.exists() and not old.exists()   # their processes are gone (4194305 > pid_max)
    assert alive.exists()                           # this one's is running: maybe still building


# --- arbitrary text at the chat and the metrics ------------------------------------------------

@pytest.fixture(scope="module")
def tiny_chat(trained):
    from vhred.chat import Chat
    from vhred.decoding import DecodeOptions
    model, cfg, sp = loading.load_model(trained["vhred"])
    return Chat(model, cfg, sp, DecodeOptions(num_samples=2, max_len=8), out=lambda *_: None,
                note=lambda *_: None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=1, max_size=3000))
def test_chat_answers_any_unicode_text(tiny_chat, text):
    responses = tiny_chat.respond(text)
    assert 1 <= len(responses) <= 2 and all(isinstance(r, str) for r in responses)
    assert len(tiny_chat.history) <= tiny_chat.cfg.max_context


def test_chat_takes_undecodable_bytes_huge_numbers_and_nan(tiny_chat, trained, capsys):
    from vhred import chat
    responses = tiny_chat.respond("caf\udce9 \ud800 \x00 hi")   # what undecodable bytes become in a str
    assert 1 <= len(responses) <= 2
    notes = []
    tiny_chat.note = notes.append
    for line in ("/seed 99999999999999999999999", "/seed -1", "/samples 100000", "/temperature nan",
                 "/temperature inf", "/top_p nan", "/pick 99", "/seed 1e400"):
        assert tiny_chat.command(line)
    assert len(notes) == 8 and all(n.startswith("(") for n in notes) and tiny_chat.opts.num_samples == 2
    for flags in (["--num-samples", "100000"], ["--temperature", "nan"], ["--temperature", "inf"],
                  ["--top-p", "nan"], ["--seed", "99999999999999999999999"]):
        code, err = one_line_exit(chat.main, ["--checkpoint", trained["vhred"], *flags], capsys)
        assert code == 2 and err.startswith("error: ")


def test_the_chats_temperature_and_top_p_take_what_the_flags_take(tiny_chat):
    """/temperature and /top_p have --temperature's and --top-p's range (docs/limits.md), no narrower."""
    notes = []
    tiny_chat.note = notes.append
    kept = tiny_chat.opts
    try:
        tiny_chat.command("/temperature 200")
        tiny_chat.command("/top_p 0.0005")
        assert (tiny_chat.opts.temperature, tiny_chat.opts.top_p, tiny_chat.opts.method) == (200.0, 0.0005, "sample")
        for line in ("/temperature 0", "/temperature 2e6", "/top_p 0", "/top_p 1.5"):
            tiny_chat.command(line)
            assert notes[-1].startswith("(") and "must be" in notes[-1]
        assert (tiny_chat.opts.temperature, tiny_chat.opts.top_p) == (200.0, 0.0005)   # refused: unchanged
    finally:
        tiny_chat.opts = kept


def test_generate_takes_a_lone_surrogate_and_refuses_deep_nesting(trained, tmp_path, capsys):
    from vhred import generate
    from vhred.decoding import DecodeOptions
    model, cfg, sp = loading.load_model(trained["vhred"])
    opts = DecodeOptions(num_samples=2, max_len=5)
    [(_, samples)] = list(generate.generate_file(model, cfg, sp, [["\ud800 hello", "caf\udce9"]], opts))
    assert len(samples) >= 1
    path = tmp_path / "c.jsonl"
    path.write_text('{"context": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(InputError, match="line 1: expected"):
        generate.read_contexts(str(path))
    (tmp_path / "binary.jsonl").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(InputError, match="not UTF-8"):
        generate.read_contexts(str(tmp_path / "binary.jsonl"))
    for flags in (["--temperature", "inf"], ["--num-samples", "0"]):
        code, _ = one_line_exit(generate.main, ["--checkpoint", trained["vhred"], "--input", str(path),
                                                "--output", str(tmp_path / "o.jsonl"), *flags], capsys)
        assert code == 2


def test_eval_and_metric_commands_refuse_zero_counts_and_directories(trained, tmp_path, capsys):
    from eval import bleu, distinct
    from vhred import evaluate
    for flags in (["--num-samples", "0"], ["--iw-samples", "-1"], ["--max-contexts", "-1"]):
        code, err = one_line_exit(evaluate.main, ["--checkpoint", trained["vhred"], *flags], capsys)
        assert code == 2
    (tmp_path / "h.txt").write_text("a\n")
    for main, argv in ((bleu.main, ["--hyps", str(tmp_path), "--refs", str(tmp_path / "h.txt")]),
                       (bleu.main, ["--hyps", str(tmp_path / "h.txt"), "--refs", str(tmp_path)]),
                       (distinct.main, [str(tmp_path)]), (distinct.main, ["--jsonl", str(tmp_path)])):
        code, err = one_line_exit(main, argv, capsys)
        assert code in (1, 2) and str(tmp_path) in err


@pytest.mark.slow   # a subprocess: bytes on a real stdin
def test_chat_through_a_pipe_of_binary_bytes(trained):
    junk = bytes(random.Random(0).randrange(256) for _ in range(2000))
    r = subprocess.run([sys.executable, "-m", "vhred.chat", "--checkpoint", trained["vhred"], "--json"], cwd=ROOT,
                       input=b"hi\n" + junk + b"\nbye \xff\xfe\n/seed 99999999999999999999999\n", capture_output=True,
                       timeout=120)
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr[-500:]
    rows = [json.loads(line) for line in r.stdout.decode("utf-8").splitlines()]   # valid UTF-8 JSON
    assert rows[0]["user"] == "hi" and rows[-1]["user"] == "bye \ufffd\ufffd"
    assert b"(seed must be between" in r.stderr


@settings(max_examples=100, deadline=None)
@given(hyps=st.lists(st.text(max_size=200), min_size=1, max_size=5), ref=st.text(max_size=200))
def test_metrics_take_any_text(hyps, ref):
    from vhred.metrics.bleu import multi_sample_bleu
    from vhred.metrics.distinct import distinct_n, intra_inter
    from vhred.metrics.text import tokenize
    toks = [tokenize(h) for h in hyps]
    r = multi_sample_bleu([toks], [tokenize(ref)], n=2)
    assert 0 <= r["precision"] <= r["recall"] <= 1 + 1e-9
    assert 0 <= distinct_n(toks, 1) <= 1 and all(0 <= x <= 1 for x in intra_inter([toks], 2))


@settings(max_examples=200, deadline=None)
@given(line=st.binary(max_size=300))
def test_jsonl_lines_of_any_bytes_are_read_or_reported(tmp_path_factory, line):
    path = tmp_path_factory.mktemp("j") / "x.jsonl"
    line = line.replace(b"\n", b" ")
    path.write_bytes(line + b"\n")
    bad = []
    rows = list(sources.iter_jsonl(str(path), seed=0, report=lambda n, why: bad.append(n)))
    # one line: read or reported, never dropped in silence; only a blank line is passed over (one
    # of a byte-order mark alone is blank: the mark is the encoding's, not the line's)
    blank = not line.removeprefix(b"\xef\xbb\xbf").strip()
    assert len(rows) + len(bad) == (0 if blank else 1) and bad in ([], [1])
