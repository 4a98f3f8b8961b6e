import io
import os
import sys
import zipfile

import pytest
import torch
from hypothesis import settings

from vhred import sources
from vhred.config import load
from vhred.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny models gain nothing from threads, and a second thread per process makes tests crawl
# when the cores are busy (a training run beside them): one thread, here and in subprocesses.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The property tests draw new examples each run, which is how they find cases; in CI (CI set, as
# CI services do) they draw the same ones every time, so that a red CI is a change, not a draw.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

SHARED_ZIP = os.path.join(ROOT, "..", "shared", "data", "dailydialog", "ijcnlp_dailydialog.zip")
STANDIN = os.path.join(ROOT, "tests", "fixtures", "standin-corpus")   # made by tests/fixtures/make_corpus.py


def real_archive() -> str | None:
    """The local DailyDialog archive ($DAILYDIALOG_SRC, else the copy in ../shared), or None when
    there is none or VHRED_TEST_CORPUS=standin asks for the stand-in anyway."""
    if os.environ.get("VHRED_TEST_CORPUS") == "standin":
        return None
    path = os.environ.get("DAILYDIALOG_SRC") or SHARED_ZIP
    return os.path.abspath(path) if os.path.exists(path) else None


def standin_zip(dest: str) -> str:
    """The stand-in corpus packed as the official archive is: ijcnlp_dailydialog/<split>.zip,
    each holding <split>/dialogues_<split>.txt and dialogues_act_<split>.txt, and the manifest."""
    with zipfile.ZipFile(dest, "w") as outer:
        outer.write(os.path.join(STANDIN, sources.STANDIN_MANIFEST), f"ijcnlp_dailydialog/{sources.STANDIN_MANIFEST}")
        for split in sources.SPLITS:
            inner = io.BytesIO()
            with zipfile.ZipFile(inner, "w") as z:
                for name in (f"dialogues_{split}.txt", f"dialogues_act_{split}.txt"):
                    z.write(os.path.join(STANDIN, split, name), f"{split}/{name}")
            outer.writestr(f"ijcnlp_dailydialog/{split}.zip", inner.getvalue())
    return dest


@pytest.fixture(scope="session")
def dailydialog_zip(tmp_path_factory):
    """The DailyDialog archive where one is found, else the stand-in corpus in the same layout:
    every test runs in a clone with no archive."""
    return real_archive() or standin_zip(str(tmp_path_factory.mktemp("standin") / "ijcnlp_dailydialog.zip"))


@pytest.fixture(scope="session")
def corpus(dailydialog_zip):
    """What the tests may expect of the corpus in use: its split sizes, and whether it is the real one."""
    manifest = sources.standin_manifest(dailydialog_zip)
    return {"real": manifest is None, "sizes": manifest["sizes"] if manifest else sources.DAILYDIALOG_SIZES}


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


@pytest.fixture(scope="session")
def vhred_model(trained):
    """(model, config, tokenizer) of the session's tiny VHRED, loaded once."""
    from vhred import loading
    return loading.load_model(trained["vhred"])


@pytest.fixture(scope="session")
def hred_model(trained):
    """(model, config, tokenizer) of the session's tiny HRED, loaded once."""
    from vhred import loading
    return loading.load_model(trained["hred"])


def child_errors(r) -> str:
    """What a failed command wrote, for an assertion's message: under torchrun a rank's own error
    comes first and the launcher's long report last, so the head and the tail of stderr."""
    err = r.stderr
    return err if len(err) <= 5000 else f"{err[:3000]}\n[...]\n{err[-2000:]}"


def train_cli(*args):
    """The training command on the tiny config, as a user would type it."""
    return [sys.executable, "-m", "vhred.train", "--config", os.path.join(ROOT, "configs", "tiny.yaml"), *args]


@pytest.fixture
def cli_args(dailydialog_zip, data_dir, tmp_path, monkeypatch):
    """Overrides that point a training command at the session's data and this test's folder."""
    monkeypatch.setenv("DAILYDIALOG_SRC", dailydialog_zip)
    return [f"data_dir={data_dir}", f"out_dir={tmp_path / 'runs'}", "save_every=5", "log_every=1"]
