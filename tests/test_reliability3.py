"""Reliability III (issue 21): the 55 cases an adversarial run found, kept as tests.

Checkpoints that cannot be verified never load silently; loaded configs and progress are
range-checked; outputs go only to regular files and leave no .tmp; every count has a cap refused
at parse time; YAML anchors and deep nesting are refused; a cache's meta.json is checksummed.
The HTTP cases are in tests/test_serve_hardening.py.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import time
import tracemalloc

import pytest
import torch

import vhred
from tests.conftest import ROOT
from vhred import cache, checkpoint, config, limits, loading, sources
from vhred.errors import CheckpointError, ConfigError, InputError
from vhred.files import json_line, output_file

FORMAT1 = os.path.join(ROOT, "tests", "fixtures", "format1-tiny.pt")


def refused(main, argv, capsys, match: str):
    """Run a command's main in-process: it must end with one line on stderr matching `match`,
    exit code 2, no traceback, and within 2 s."""
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert time.monotonic() - t0 < 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert match in err, err
    return err


# --- 1. checkpoints that cannot be verified ---------------------------------------------------------

def _format1(tmp_path, name: str, change=None) -> str:
    state = torch.load(FORMAT1, weights_only=True)
    if change:
        change(state)
    path = str(tmp_path / name)
    torch.save(state, path)
    return path


@pytest.mark.parametrize("fill", [0.5, math.nan])
def test_a_format_1_file_never_loads_silently(tmp_path, fill):
    """"format": 1 skipped the checksum: weights set to 0.5 or NaN loaded and answered."""
    path = _format1(tmp_path, "old.pt", lambda s: [t.fill_(fill) for t in s["model"].values() if t.is_floating_point()])
    with pytest.raises(CheckpointError, match="format-1 .* cannot be verified"):
        checkpoint.load(path)
    with pytest.raises(CheckpointError, match="format-1"):
        vhred.load(path, device="cpu")
    if math.isnan(fill):   # even the explicit upgrade checks what it can
        with pytest.raises(CheckpointError, match="NaN or infinite"):
            checkpoint.upgrade(path, str(tmp_path / "new.pt"))
        assert not (tmp_path / "new.pt").exists()


def test_the_upgrade_command_says_it_trusts_the_file(tmp_path, capsys):
    path = _format1(tmp_path, "old.pt")
    checkpoint.main(["upgrade", path, "--out", str(tmp_path / "new.pt")])
    out = capsys.readouterr().out
    assert "trusted" in out and "format 1 has no checksum" in out
    assert checkpoint.load(str(tmp_path / "new.pt"))["format"] == checkpoint.FORMAT
    refused(checkpoint.main, ["upgrade", str(tmp_path / "new.pt")], capsys, "not a format-1 checkpoint")


def _resigned(trained, tmp_path, change, name="best.pt") -> str:
    """A copy of the tiny VHRED with a change, its checksum written anew (as an attacker could)."""
    state = checkpoint.load(checkpoint.resolve(trained["vhred"]))
    state.pop("format")
    change(state)
    path = str(tmp_path / name)
    checkpoint.save(state, path)
    return path


@pytest.mark.parametrize("key, value, match", [
    ("max_utt_len", -3, "max_utt_len must be positive"),
    ("vocab_size", 2 ** 31 - 1, "vocab_size may be at most"),
    ("lr", math.nan, "lr must be a finite number"),
])
def test_a_loaded_config_is_range_checked(trained, tmp_path, key, value, match):
    path = _resigned(trained, tmp_path, lambda s: s["config"].__setitem__(key, value))
    with pytest.raises(CheckpointError, match=match):
        checkpoint.load(path)


def test_a_resigned_huge_model_config_is_refused_without_allocating(trained, tmp_path):
    """emb_dim=2^31-1 raised a raw allocation error: it is over the cap; a value under the cap
    that the weights do not fit is caught on the meta device, before any allocation."""
    path = _resigned(trained, tmp_path, lambda s: s["config"]["arch"].__setitem__("emb_dim", 2 ** 31 - 1))
    with pytest.raises(CheckpointError, match="emb_dim may be at most"):
        loading.load_model(path)
    path = _resigned(trained, tmp_path, lambda s: s["config"]["arch"].__setitem__("emb_dim", 8192), "b.pt")
    tracemalloc.start()
    with pytest.raises(CheckpointError, match="weights do not fit"):
        loading.load_model(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100 * 2 ** 20


@pytest.mark.parametrize("progress, match", [
    ({"step": -5}, "step=-5"),
    ({"epoch": 1e30}, r"epoch=1e\+30"),
    ({"best": math.nan}, "best=nan"),
    ({"best": -1.0}, r"best=-1\.0"),
    ({"surprise": 1}, "unknown progress entry"),
])
def test_loaded_progress_is_range_checked(trained, tmp_path, progress, match):
    """A last.pt with step=-5, epoch=1e30, best=NaN "finished" a run with rc 0."""
    path = _resigned(trained, tmp_path, lambda s: s["progress"].update(progress), "last.pt")
    with pytest.raises(CheckpointError, match=match):
        checkpoint.load(path)


def test_a_run_with_a_forged_last_pt_stops_with_one_line(tiny_cfg):
    from vhred.train import train
    run = train(tiny_cfg("max_steps=2", "name=forged"), log=lambda *_: None)
    last = os.path.join(run.dir, "last.pt")
    state = checkpoint.load(last)
    state.pop("format")
    state["progress"].update(step=-5, best=math.nan)
    checkpoint.save(state, last)
    with pytest.raises(CheckpointError, match="out of range"):
        train(tiny_cfg("max_steps=4", "name=forged"), log=lambda *_: None)


def test_non_finite_numbers_are_never_written_as_bare_nan():
    line = json_line({"scores": [math.nan, math.inf, -math.inf, 1.5], "text": "a\ud800b"})
    assert json.loads(line) == {"scores": [None, None, None, 1.5], "text": "a\ufffdb"}
    assert "NaN" not in line and "Infinity" not in line


def test_a_non_checkpoint_file_is_explained_without_a_cut_message(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(str(bad))
    why = str(e.value).split("(", 1)[1].rsplit(")", 1)[0]
    assert why.endswith(" ...") or len(why) <= 160
    assert "\0" not in str(e.value)


# --- 2. outputs: regular files only, no .tmp left ---------------------------------------------------

def test_output_to_a_device_or_fifo_is_refused_and_left_alone(tmp_path, capsys, trained):
    from vhred.generate import main
    contexts = tmp_path / "in.jsonl"
    contexts.write_text('{"context": ["Hi!"]}\n')
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for target in (os.devnull, str(fifo), str(tmp_path)):
        before = os.stat(target).st_mode
        refused(main, ["--checkpoint", trained["vhred"], "--input", str(contexts), "--output", target], capsys,
                "is not a regular file")
        assert os.stat(target).st_mode == before   # still the device, FIFO or folder
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]


def test_a_failed_write_leaves_no_tmp_and_stale_ones_are_removed(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    with pytest.raises(RuntimeError):
        with output_file(str(out)) as f:
            f.write("half")
            raise RuntimeError("killed mid-way")
    assert out.read_text() == "old\n" and os.listdir(tmp_path) == ["out.jsonl"]
    (tmp_path / "out.jsonl.tmp999999999").write_text("left by a SIGKILL")   # no such process
    with output_file(str(out)) as f:
        f.write("new\n")
    assert out.read_text() == "new\n" and os.listdir(tmp_path) == ["out.jsonl"]


def test_a_lone_surrogate_in_a_context_is_written_not_a_traceback(tmp_path, trained):
    from vhred.generate import main
    contexts = tmp_path / "in.jsonl"
    contexts.write_text('{"context": ["Hi \\ud800 there"]}\n')
    out = tmp_path / "out.jsonl"
    main(["--checkpoint", trained["vhred"], "--input", str(contexts), "--output", str(out), "--num-samples", "2"])
    row = json.loads(out.read_text())
    assert row["context"] == ["Hi \ufffd there"] and row["samples"]
    assert all(x is None or math.isfinite(x) for x in row["scores"])
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "out.jsonl"]


# --- 3. every count has a cap, refused at parse time -------------------------------------------------

@pytest.mark.parametrize("module, argv, match", [
    ("chat", ["--method", "beam", "--beam", "1000000"], "beam must be between 1 and 100"),
    ("generate", ["--num-samples", "500000"], "num_samples must be between 1 and 1,000"),
    ("generate", ["--num-samples", "1000000"], "got 1000000"),
    ("generate", ["--max-len", "1000000", "--min-len", "1000000"], "max_len must be between 1 and 1,000"),
    ("generate", ["--method", "beam", "--beam", "100", "--num-samples", "100"], "num_samples x beam"),
    ("evaluate", ["--num-samples", "100000"], "num_samples must be"),
    ("evaluate", ["--iw-samples", "1000000"], "--iw-samples must be between 0 and 1,000"),
    ("rank", ["--iw-samples", "1000000"], "--iw-samples must be"),
    ("latent", ["interpolate", "--context", "hi", "--steps", "1000000000"], "--steps must be between 2"),
    ("latent", ["interpolate", "--context", "hi", "--max-len", "-5"], "--max-len must be"),
    ("latent", ["interpolate", "--context", "hi", "--max-len", "0"], "--max-len must be"),
    ("latent", ["interpolate", "--context", "hi", "--around-mean", "nan"], "--around-mean must be"),
    ("latent", ["interpolate", "--context", "hi", "--around-mean", "inf"], "--around-mean must be"),
    ("latent", ["plot", "--dialogues", "0"], "--dialogues must be"),
    ("latent", ["plot", "--dialogues", "-5"], "--dialogues must be"),
    ("latent", ["plot", "--out", "x.txt"], "--out must name a picture"),
    ("bench", ["--serve", "--clients", "100000"], "--clients must be between 1 and 1,024"),
    ("bench", ["--steps", "1000000000"], "--steps must be between 1 and 100,000"),
])
def test_counts_beyond_their_cap_are_refused_in_one_line_before_any_work(module, argv, match, capsys, tmp_path,
                                                                         monkeypatch):
    import importlib
    main = importlib.import_module(f"vhred.{module}").main
    monkeypatch.chdir(tmp_path)   # no runs/ here: nothing is loaded before the refusal
    if module == "generate":
        argv = [*argv, "--input", "in.jsonl", "--output", "out.jsonl"]
    tracemalloc.start()
    refused(main, argv, capsys, match)
    assert tracemalloc.get_traced_memory()[1] < 50 * 2 ** 20
    tracemalloc.stop()


def test_the_api_caps_counts_as_the_flags_do(trained):
    bot = vhred.load(trained["vhred"], device="cpu")
    for kwargs, match in (({"n": 10 ** 6}, "n must be between 1 and 1,000"), ({"max_len": 10 ** 6}, "max_len must be"),
                          ({"method": "beam", "beam": 10 ** 6}, "beam must be"),
                          ({"temperature": 10 ** 400, "method": "sample"}, "temperature must be")):
        with pytest.raises(InputError, match=match):
            bot.respond(["Hi"], **kwargs)
    with pytest.raises(InputError, match="finite numbers between"):
        bot.respond(["Hi"], z=[1e300] * bot.config.arch.z_dim)
    with pytest.raises(InputError, match="steps must be"):
        bot.interpolate(["Hi"], [0.0] * 8, [1.0] * 8, steps=10 ** 9)


def test_interpolating_from_the_origin_gives_finite_points():
    from vhred.latent import interpolate
    zero = torch.zeros(8)
    for z1 in (zero, torch.ones(8)):
        assert torch.isfinite(interpolate(zero, z1, 5, spherical=True)).all()


@pytest.mark.parametrize("override, match", [
    ("vocab_size=2147483647", "vocab_size may be at most"),
    ("emb_dim=100000", "emb_dim may be at most"),
    ("tokenizer_sentences=1000000000", "tokenizer_sentences may be at most"),
])
def test_config_sizes_are_capped(override, match):
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=match):
        config.load(os.path.join(ROOT, "configs", "tiny.yaml"), [override])
    assert time.monotonic() - t0 < 2


def test_an_input_that_is_a_device_or_too_big_is_refused_unread(tmp_path, capsys, monkeypatch):
    from vhred.generate import main
    refused(main, ["--input", "/dev/zero", "--output", str(tmp_path / "o.jsonl")], capsys, "not a regular file")
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as f:
        f.truncate(limits.MAX_INPUT_BYTES + 1)   # sparse: no disk used
    refused(main, ["--input", str(big), "--output", str(tmp_path / "o.jsonl")], capsys, "at most 64 MB is read")


def test_a_jsonl_line_over_the_cap_is_skipped_in_bounded_memory(tmp_path):
    path = tmp_path / "data.jsonl"
    long_line = b'{"dialog": ["' + b"x" * (limits.MAX_LINE_BYTES + 10) + b'"]}\n'
    path.write_bytes(b'{"dialog": ["a", "b"]}\n' + long_line + b'{"dialog": ["c", "d"]}\n')
    bad = []
    tracemalloc.start()
    got = list(sources.iter_jsonl(str(path), 0, report=lambda *a: bad.append(a)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [d for _, d in got] == [["a", "b"], ["c", "d"]] and bad == [(2, "longer than 16 MB")]
    assert peak < limits.MAX_LINE_BYTES * 2.5


# --- 4. YAML ------------------------------------------------------------------------------------------

LAUGHS = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
? [*d,*d,*d,*d,*d,*d,*d,*d,*d]
: 1
"""


@pytest.mark.parametrize("text, match", [
    (LAUGHS, "anchors and aliases"),
    ("lr: &x 0.1\nkl_max: *x\n", "anchors and aliases"),
    ("[" * 100_000 + "]" * 100_000, "nested more than"),
    ("a:\n" + "".join("  " * i + "b:\n" for i in range(1, 60)), "nested more than"),
])
def test_yaml_expansion_and_deep_nesting_are_refused_before_any_work(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    tracemalloc.start()
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=match):
        config.load(str(path), [])
    assert time.monotonic() - t0 < 2
    assert tracemalloc.get_traced_memory()[1] < 50 * 2 ** 20
    tracemalloc.stop()


def test_a_huge_config_file_is_refused_unread(tmp_path):
    path = tmp_path / "c.yaml"
    with open(path, "wb") as f:
        f.truncate(limits.MAX_CONFIG_BYTES + 1)
    with pytest.raises(ConfigError, match="at most 1024 KB"):
        config.load(str(path), [])


# --- 6. the data cache's meta.json -------------------------------------------------------------------

@pytest.fixture
def cache_copy(tiny_cfg, tmp_path):
    """A copy of the tiny config's prepared cache under a fresh data_dir: (cfg, folder)."""
    from vhred.dataset import prepare
    shared = prepare(tiny_cfg(), log=lambda *_: None)
    cfg = tiny_cfg(f"data_dir={tmp_path / 'data'}")
    folder = os.path.join(cfg.data_dir, "processed", os.path.basename(shared))
    shutil.copytree(shared, folder)
    return cfg, folder


@pytest.mark.parametrize("edit", [
    lambda m: m.__setitem__("vocab_size", m["vocab_size"] + 1000),
    lambda m: m.__setitem__("vocab_size", "many"),
    lambda m: m.pop("vocab_size"),
    lambda m: m.pop("source"),
    lambda m: m.pop("meta_sha256"),
    lambda m: m.__setitem__("sha256", "no"),
])
def test_an_edited_or_malformed_meta_json_is_not_intact(cache_copy, edit):
    from vhred.dataset import CACHE_FILES
    _, folder = cache_copy
    meta_path = os.path.join(folder, "meta.json")
    meta = json.load(open(meta_path))
    assert cache.intact(folder, CACHE_FILES, log=print)
    edit(meta)
    json.dump(meta, open(meta_path, "w"))
    notes = []
    assert not cache.intact(folder, CACHE_FILES, log=notes.append) and "preparing it again" in notes[0]


def test_an_edited_meta_json_is_rebuilt_and_training_reads_the_rebuilt_one(cache_copy):
    from vhred.dataset import CACHE_FILES, prepare
    cfg, folder = cache_copy
    meta_path = os.path.join(folder, "meta.json")
    meta = json.load(open(meta_path))
    right = meta["vocab_size"]
    json.dump({**meta, "vocab_size": right + 1000}, open(meta_path, "w"))
    assert prepare(cfg, log=lambda *_: None) == folder   # rebuilt in place, and whole
    assert cache.intact(folder, CACHE_FILES, log=print) and json.load(open(meta_path))["vocab_size"] == right


@pytest.mark.parametrize("raw", [b"[1, 2]", b"\xff\xfe", b"[" * 100_000])
def test_a_meta_json_that_is_not_an_object_means_a_rebuild(cache_copy, raw):
    from vhred.dataset import CACHE_FILES
    _, folder = cache_copy
    open(os.path.join(folder, "meta.json"), "wb").write(raw)
    assert not cache.intact(folder, CACHE_FILES, log=lambda *_: None)


# --- 7. smaller -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("garbage, skipped", [(b"\xff\xfe{\n", True), (b"[1]\n", True), (b'"text"\n', True),
                                               (b'{"split": "train", "step": "x"}\n', False)])
def test_plot_reads_a_metrics_file_with_garbage_lines(trained, tmp_path, garbage, skipped, capsys):
    """Lines that are no record (cut short, not UTF-8, not an object) are skipped and the curves
    drawn anew; a record of the wrong kind is refused in one line, no traceback."""
    from vhred import plot
    run = tmp_path / "run"
    shutil.copytree(trained["vhred"], run)
    (run / "curves.png").unlink(missing_ok=True)   # training drew one: only a new one shows that plot wrote
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(garbage)
    if skipped:
        plot.main([str(run)])
        assert (run / "curves.png").stat().st_size > 0
    else:
        with pytest.raises(SystemExit) as e:
            plot.main([str(run)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert not (run / "curves.png").exists()


def test_plot_draws_validations_below_full_kl_weight_apart(tmp_path):
    """Step 417 of a 200-step cycle follows 17 steps at a small beta: its KL jumps, so its figures
    are hollow markers off the line, not a spike in it. A model without a KL (HRED) has none."""
    from dataclasses import asdict

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vhred import plot
    from vhred.config import Config
    cfg = Config(kl_schedule="cyclical", kl_warmup_steps=100, kl_cycle_steps=200)
    (tmp_path / "config.json").write_text(json.dumps(asdict(cfg)))
    val = [{"step": s, "kl_per_utt": kl, "nll_per_token": 4.0} for s, kl in ((200, 3.4), (417, 12.7), (600, 3.2))]
    assert plot.below_full_weight(str(tmp_path), val) == {417}
    assert plot.below_full_weight(str(tmp_path), [{**r, "kl_per_utt": 0.0} for r in val]) == set()
    fig, a = plt.subplots()
    plot.plot_val(a, val, {417}, "nll_per_token", "o", "C1", "validation NLL")
    line, apart = a.get_lines()
    assert list(line.get_xdata()) == [200, 600] and line.get_linestyle() == "-"
    assert list(apart.get_xdata()) == [417] and apart.get_linestyle() == "None" and apart.get_markerfacecolor() == "none"
    assert apart.get_label() == "validation NLL, below full KL weight"
    plt.close(fig)
    (tmp_path / "config.json").unlink()   # no config: nothing to tell them apart by
    assert plot.below_full_weight(str(tmp_path), val) == set()


def test_plot_draws_beta_at_every_step_and_each_logged_step_once(tmp_path):
    """Rows every 50 steps sample a 200-step cyclical schedule at the same phases (0.49, 0.99, 1,
    1): the panel draws beta from the run's config at every step, so its troughs at 0 show. A
    step logged twice (an older run killed and resumed) is drawn once, its last row."""
    from dataclasses import asdict

    from vhred import plot
    from vhred.config import Config
    cfg = Config(kl_schedule="cyclical", kl_warmup_steps=100, kl_cycle_steps=200)
    (tmp_path / "config.json").write_text(json.dumps(asdict(cfg)))
    rows = [{"split": "train", "step": s, "beta": 0.0, "nll_per_token": 5.0} for s in range(50, 1001, 50)]
    rows.insert(2, {**rows[2], "nll_per_token": 9.0})   # step 150 twice: the first row was undone
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, _ = plot.read_metrics(str(tmp_path))
    assert [r["step"] for r in train] == list(range(50, 1001, 50)) and train[2]["nll_per_token"] == 5.0
    steps, beta = plot.beta_curve(str(tmp_path), train)
    assert steps == list(range(1, 1001)) and min(beta) == 0.0 and max(beta) == 1.0
    assert beta[200] == 0.0 and beta[250] == 0.5   # the row at step 201 holds step 200's beta
    (tmp_path / "config.json").unlink()                # no config: the logged values
    assert plot.beta_curve(str(tmp_path), train) == ([r["step"] for r in train], [0.0] * 20)


def test_chat_reset_forgets_the_kept_z(trained):
    from vhred.chat import Chat
    from vhred.decoding import DecodeOptions
    model, cfg, sp = loading.load_model(trained["vhred"])
    chat = Chat(model, cfg, sp, DecodeOptions(num_samples=2), out=lambda *_: None, note=lambda *_: None)
    chat.respond("Hello!")
    chat.command("/keep 1")
    assert chat.kept is not None
    chat.command("/reset")
    assert chat.kept is None and chat.history == [] and chat.scores == []


def test_errors_never_print_a_nul_byte(capsys):
    from vhred.generate import main
    err = refused(main, ["--checkpoint", "a\0b", "--input", "in\0.jsonl", "--output", "o.jsonl"], capsys,
                  "not a usable file name")
    assert "\0" not in err


@pytest.mark.slow   # subprocesses: the pipe closes as `| head` closes it
@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"]])
def test_help_into_a_closed_pipe_ends_quietly(argv):
    proc = subprocess.Popen([sys.executable, "-m", "vhred", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    proc.stdout.close()   # the reader is gone before the first write
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


@pytest.mark.slow   # subprocesses: standard output is a file on a full disk
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("argv", [["--help"], ["--version"]])
def test_the_vhred_commands_own_output_into_a_full_disk_is_one_line(argv):
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "vhred", *argv], stdout=full, stderr=subprocess.PIPE,
                              text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
    assert proc.returncode == 1 and proc.stderr == "error: No space left on device (writing standard output)\n"


def _limit_files_to_4_bytes():   # as a full disk: a write past it fails (EFBIG) instead of the process being killed
    import resource
    import signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4, 4))


@pytest.mark.slow   # a subprocess
def test_a_commands_output_left_in_its_buffer_fails_as_one_line_not_at_pythons_exit(tmp_path):
    script = tmp_path / "printer.py"
    script.write_text("from vhred.cli import command\n\n\n@command\ndef main(argv=None):\n"
                      "    print('a table')   # buffered: a file is written when Python flushes it\n\n\nmain()\n")
    with open(tmp_path / "out.txt", "w") as out:
        env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "PYTHONPATH": ROOT}
        proc = subprocess.run([sys.executable, str(script)], stdout=out, stderr=subprocess.PIPE, text=True,
                              env=env, timeout=60, preexec_fn=_limit_files_to_4_bytes)
    assert proc.returncode == 1 and proc.stderr == "error: File too large (writing standard output)\n", proc.stderr
    assert "Exception ignored" not in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.slow   # a subprocess
def test_a_print_that_fails_mid_command_names_standard_output(tmp_path):
    # print() into a full disk raises an OSError that names no file: the message must still say which
    script = tmp_path / "printer.py"
    script.write_text("from vhred.cli import command\n\n\n@command\ndef main(argv=None):\n"
                      "    print('the first reply', flush=True)   # as chat prints each turn's answer\n"
                      "    print('never reached')\n\n\nmain()\n")
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.run([sys.executable, str(script)], stdout=out, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": ROOT}, timeout=60,
                              preexec_fn=_limit_files_to_4_bytes)
    assert proc.returncode == 1 and proc.stderr == "error: File too large (writing standard output)\n", proc.stderr


def test_a_command_called_from_python_leaves_sys_stdout_as_it_found_it(capsys):
    from vhred.cli import command
    before = sys.stdout

    @command
    def main(argv=None):
        print("inside")
        return sys.stdout is not before   # wrapped while the command runs

    assert main() is True and sys.stdout is before
    assert capsys.readouterr().out == "inside\n"


@pytest.mark.slow   # a subprocess started with its standard output closed (`>&-`)
def test_a_command_started_with_stdout_closed_ends_as_it_did(tmp_path):
    """Python then has no sys.stdout: print writes nothing, and the final flush must not fail."""
    script = tmp_path / "printer.py"
    script.write_text("from vhred.cli import command\n\n\n@command\ndef main(argv=None):\n    print('a table')\n\n\nmain()\n")
    proc = subprocess.run(f"{sys.executable} {script} >&-", shell=True, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
