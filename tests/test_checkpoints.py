"""Checkpoints: atomic saves, the integrity check, older formats, and every way a file can be wrong."""
import json
import os

import pytest
import torch

from tests.conftest import ROOT
from vhred import checkpoint, loading
from vhred.checkpoint import CheckpointError
from vhred.dataset import collate
from vhred.train import train

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "format1-tiny.pt")


def test_a_format_1_checkpoint_upgraded_computes_what_it_did(tmp_path):
    """tests/fixtures/format1-tiny.pt was written by vhred before the restructuring (flat config,
    loose step and best, no checksum); its forward outputs on a fixed batch were recorded beside
    it then. It loads only after the explicit upgrade (format 1 cannot be verified)."""
    with pytest.raises(CheckpointError, match="format-1 .* cannot be verified.*vhred.checkpoint upgrade"):
        checkpoint.load(FIXTURE)
    upgraded = checkpoint.upgrade(FIXTURE, str(tmp_path / "upgraded.pt"))
    state = checkpoint.load(upgraded)
    assert state["format"] == checkpoint.FORMAT and state["progress"]["step"] == 25
    assert state["config"]["arch"]["z_dim"] == 8 and "z_dim" not in state["config"]
    model, cfg, sp = loading.load_model(upgraded)
    assert cfg.arch.model == "vhred" and cfg.max_context == 4
    b = collate([[sp.encode("hello , how are you ?"), sp.encode("i am fine , thanks .")],
                 [sp.encode("where is the station ?"), sp.encode("turn left ."), sp.encode("thanks !")]])
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(b.tokens, b.lens, b.turns)
    want = json.load(open(FIXTURE.replace(".pt", ".json")))
    assert out["nll"].tolist() == pytest.approx(want["nll"], rel=1e-5)
    assert out["kl"].sum(-1).tolist() == pytest.approx(want["kl"], rel=1e-5)


def test_flipped_bytes_in_a_weight_are_detected(trained, tmp_path):
    """Bit rot inside a tensor: torch.load reads it silently, the checksum does not."""
    good = checkpoint.resolve(trained["vhred"])
    data = bytearray(open(good, "rb").read())
    weights = checkpoint.load(good)["model"]["dec_rnn.weight_hh_l0"]
    raw = weights.numpy().tobytes()
    at = bytes(data).find(raw[:64])   # the tensor's bytes are stored as they are in the zip
    assert at > 0
    for i in range(at + 100, at + 116):
        data[i] ^= 0xFF
    bad = tmp_path / "best.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupt"):
        loading.load_model(str(bad))


def test_best_pt_copied_over_last_pt_is_explained(tiny_cfg):
    run = train(tiny_cfg("max_steps=4", "name=copied"), log=lambda *_: None)
    os.replace(os.path.join(run.dir, "best.pt"), os.path.join(run.dir, "last.pt"))
    with pytest.raises(CheckpointError, match="no optimiser state .*copy of best.pt"):
        train(tiny_cfg("max_steps=8", "name=copied"), log=lambda *_: None)


def test_a_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable vhred checkpoint"):
        checkpoint.load(str(bad))
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(str(tmp_path / "missing.pt"))


def test_truncated_foreign_and_mismatched_checkpoints_are_refused(trained, tmp_path):
    good = checkpoint.resolve(trained["vhred"])
    data = open(good, "rb").read()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable vhred checkpoint"):
        checkpoint.load(str(tmp_path / "cut.pt"))
    state = torch.load(good, weights_only=True)
    torch.save({**state, "format": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format 99"):
        checkpoint.load(str(tmp_path / "future.pt"))
    state.pop("checksum")
    other = checkpoint.load(checkpoint.resolve(trained["hred"]))
    # consistent files (their checksum written by vhred) with the wrong contents
    checkpoint.save({**state, "tokenizer": checkpoint.as_tensor(b"not a sentencepiece model")}, str(tmp_path / "tok.pt"))
    with pytest.raises(CheckpointError, match="tokenizer inside it is unreadable"):
        loading.load_model(str(tmp_path / "tok.pt"))
    checkpoint.save({**state, "model": other["model"]}, str(tmp_path / "mixed.pt"))
    with pytest.raises(CheckpointError, match="weights do not fit"):
        loading.load_model(str(tmp_path / "mixed.pt"))
    checkpoint.save({**state, "config": [1, 2]}, str(tmp_path / "list.pt"))
    with pytest.raises(CheckpointError, match="config is not a mapping"):
        loading.load_model(str(tmp_path / "list.pt"))
    (tmp_path / "text.pt").write_text("just some text, named .pt")
    with pytest.raises(CheckpointError, match="not a readable vhred checkpoint"):
        checkpoint.load(str(tmp_path / "text.pt"))


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_crafted_pickle_checkpoint_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": {}, "config": {}, "tokenizer": Exploit(), "format": 1}, "evil.pt")
    with pytest.raises(CheckpointError, match="not a readable vhred checkpoint"):
        checkpoint.load("evil.pt")
    assert not (tmp_path / "pwned").exists()


