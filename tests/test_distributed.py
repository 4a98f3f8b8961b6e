"""Two-process data-parallel training (torchrun, gloo on CPU) against one process."""
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from vhred import checkpoint

# no randomness inside the step (HRED, no word dropout), so the two runs can match closely
SAME = ["model=hred", "word_dropout=0", "max_steps=12", "log_every=1", "lr_warmup_steps=0"]


def train_cmd(data_dir, out, name, nproc):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    return launcher + ["-m", "vhred.train", "--config", os.path.join(ROOT, "configs", "tiny.yaml"),
                       f"data_dir={data_dir}", f"out_dir={out}", f"name={name}", *SAME]


def test_two_processes_train_like_one_with_the_same_global_batch(dailydialog_zip, data_dir, tmp_path):
    env = {**os.environ, "DAILYDIALOG_SRC": dailydialog_zip, "OMP_NUM_THREADS": "1"}
    for name, nproc in (("one", 1), ("two", 2)):
        r = subprocess.run(train_cmd(data_dir, tmp_path, name, nproc), cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stderr[-2000:]
    one, two = (checkpoint.load(str(tmp_path / n / "last.pt")) for n in ("one", "two"))
    assert one["step"] == two["step"] == 12
    for key, a in one["model"].items():
        assert torch.allclose(a, two["model"][key], atol=2e-3), key
    loss = {n: [json.loads(l)["loss"] for l in open(tmp_path / n / "metrics.jsonl") if '"train"' in l]
            for n in ("one", "two")}
    assert loss["two"] == pytest.approx(loss["one"], rel=1e-3)
    assert sum(loss["two"][-3:]) < sum(loss["two"][:3])   # and it learns
