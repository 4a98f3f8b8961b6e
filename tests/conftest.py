import os
import sys

import pytest
import torch

from vhred.config import load
from vhred.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny models gain nothing from threads, and a second thread per process makes tests crawl
# when the cores are busy (a training run beside them): one thread, here and in subprocesses.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_ZIP = os.path.join(ROOT, "..", "shared", "data", "dailydialog", "ijcnlp_dailydialog.zip")


@pytest.fixture(scope="session")
def dailydialog_zip():
    """The local DailyDialog archive: $DAILYDIALOG_SRC, else the copy in ../shared."""
    path = os.environ.get("DAILYDIALOG_SRC") or SHARED_ZIP
    if not os.path.exists(path):
        pytest.skip("no local DailyDialog archive (set DAILYDIALOG_SRC)")
    return os.path.abspath(path)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One data folder for the whole session, so the tiny slice is prepared once."""
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture
def tiny_cfg(dailydialog_zip, data_dir, tmp_path, monkeypatch):
    """The tiny config on a DailyDialog slice, writing its run under tmp_path."""
    monkeypatch.setenv("DAILYDIALOG_SRC", dailydialog_zip)
    def make(*overrides):
        return load(os.path.join(ROOT, "configs", "tiny.yaml"),
                    [f"data_dir={data_dir}", f"out_dir={tmp_path / 'runs'}", *overrides])
    return make


@pytest.fixture(scope="session")
def trained(dailydialog_zip, data_dir, tmp_path_factory):
    """Run folders of a tiny VHRED and a tiny HRED, trained once for the session: {model: dir}."""
    out = tmp_path_factory.mktemp("trained")
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAILYDIALOG_SRC", dailydialog_zip)
        for kind in ("vhred", "hred"):
            cfg = load(os.path.join(ROOT, "configs", "tiny.yaml"),
                       [f"data_dir={data_dir}", f"out_dir={out}", f"model={kind}", "epochs=4"])
            runs[kind] = train(cfg, log=lambda *_: None).dir
    return runs


def train_cli(*args):
    """The training command on the tiny config, as a user would type it."""
    return [sys.executable, "-m", "vhred.train", "--config", os.path.join(ROOT, "configs", "tiny.yaml"), *args]


@pytest.fixture
def cli_args(dailydialog_zip, data_dir, tmp_path, monkeypatch):
    """Overrides that point a training command at the session's data and this test's folder."""
    monkeypatch.setenv("DAILYDIALOG_SRC", dailydialog_zip)
    return [f"data_dir={data_dir}", f"out_dir={tmp_path / 'runs'}", "save_every=5", "log_every=1"]
