"""Faults (kills, signals, full disks), bad input of every kind, and safe loading."""
import json
import os
import random
import signal
import subprocess
import time
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, train_cli
from vhred import checkpoint, sources
from vhred.sources import DataError


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


# --- faults ------------------------------------------------------------------------------------

@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_sigkill_at_random_moments_never_loses_more_than_a_save_interval(cli_args, tmp_path):
    run_dir = tmp_path / "runs" / "tiny-vhred"
    rng = random.Random(0)
    saved = 0
    for kill in range(4):
        proc = subprocess.Popen(train_cli(*cli_args, "epochs=1000"), cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        time.sleep(rng.uniform(1.0, 6.0))   # start-up takes ~2-3 s: sometimes before any save
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        if saved and "parameters on" in out:   # got as far as training: it resumed where it should
            assert f"resuming {run_dir} at step {saved}" in out
        reached = max(logged_steps(run_dir), default=0)
        last = run_dir / "last.pt"
        # whole and readable after every kill (none yet only if killed before the first save)
        state = checkpoint.load(str(last)) if last.exists() else {"step": 0}
        assert state["progress"]["step"] >= saved                         # never goes back
        assert reached - state["progress"]["step"] <= 5                   # loses at most save_every steps
        saved = state["progress"]["step"]
    done = subprocess.run(train_cli(*cli_args, f"max_steps={saved + 6}"), cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and (f"at step {saved}" in done.stdout or not saved)
    assert not [n for n in os.listdir(run_dir) if ".tmp" in n]
    model, _, _ = checkpoint.load_model(str(run_dir / "best.pt"))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_sigterm_saves_first(cli_args, tmp_path):
    run_dir = tmp_path / "runs" / "tiny-vhred"
    proc = subprocess.Popen(train_cli(*cli_args, "epochs=1000", "save_every=100000"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = time.time()
    while len(logged_steps(run_dir)) < 3 and time.time() - start < 120:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    assert checkpoint.load(str(run_dir / "last.pt"))["progress"]["step"] >= 3


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tiny_cfg, monkeypatch, capsys):
    from vhred import train as train_mod
    cfg = tiny_cfg("max_steps=10", "name=disk")
    train_mod.train(cfg, log=lambda *_: None)
    last = os.path.join(cfg.out_dir, "disk", "last.pt")
    before = open(last, "rb").read()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main(["--config", os.path.join(ROOT, "configs", "tiny.yaml"), f"data_dir={cfg.data_dir}",
                        f"out_dir={cfg.out_dir}", "name=disk", "max_steps=20"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1
    assert err.count("\n") == 0 and "No space left on device" in err and "intact" in err
    assert open(last, "rb").read() == before and checkpoint.load(last)["progress"]["step"] == 10
    assert not [n for n in os.listdir(os.path.dirname(last)) if ".tmp" in n]


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
    changed["test"] = official["test"].replace(b"Good", b"Fine", 1)   # same counts, other text
    tampered = make_zip(tmp_path / "changed.zip", {f"{s}/dialogues_{s}.txt": d for s, d in changed.items()})
    with pytest.raises(DataError, match="differs from the official DailyDialog release"):
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


# --- arbitrary text at the chat and the metrics ------------------------------------------------

@pytest.fixture(scope="module")
def tiny_chat(trained):
    from vhred.chat import Chat
    from vhred.generate import DecodeOptions
    model, cfg, sp = checkpoint.load_model(trained["vhred"])
    return Chat(model, cfg, sp, DecodeOptions(num_samples=2, max_len=8), out=lambda *_: None,
                note=lambda *_: None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=1, max_size=3000))
def test_chat_answers_any_unicode_text(tiny_chat, text):
    responses = tiny_chat.respond(text)
    assert 1 <= len(responses) <= 2 and all(isinstance(r, str) for r in responses)
    assert len(tiny_chat.history) <= tiny_chat.cfg.max_context


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
    path.write_bytes(line.replace(b"\n", b" ") + b"\n")
    bad = []
    rows = list(sources.iter_jsonl(str(path), seed=0, report=lambda n, why: bad.append(n)))
    assert len(rows) + len(bad) <= 1
