"""The trainer end to end on the tiny config and a slice of DailyDialog: learning, resuming,
schedules, early stopping, data parallelism."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT, child_errors, train_cli
from vhred import checkpoint, config, loading
from vhred import train as train_module
from vhred.checkpoint import CheckpointError
from vhred.config import Config
from vhred.errors import ConfigError
from vhred.schedule import kl_weight, learning_rate, validation_due
from vhred.train import train


def quiet(*_):
    pass


def read_metrics(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]


def test_tiny_run_learns_and_writes_its_run_folder(tiny_cfg):
    run = train(tiny_cfg("epochs=3", "log_every=1"), log=quiet)
    names = set(os.listdir(run.dir))
    assert {"config.json", "tokenizer.model", "metrics.jsonl", "last.pt", "best.pt"} <= names
    train_nll = [m["nll_per_token"] for m in read_metrics(run.dir) if m["split"] == "train"]
    assert sum(train_nll[-10:]) / 10 < sum(train_nll[:5]) / 5 - 0.5
    val = [m for m in read_metrics(run.dir) if m["split"] == "val"]
    assert len(val) == 3 and val[-1]["elbo_per_token"] < val[0]["elbo_per_token"]
    assert val[-1]["ppl"] == pytest.approx(2.718281828 ** val[-1]["elbo_per_token"], rel=1e-6)
    model, cfg, sp = loading.load_model(run.dir)   # best.pt alone rebuilds model and tokenizer
    assert model.lm_head.out_features == sp.get_piece_size() and cfg.arch.z_dim == 8


def test_replies_to_wh_questions_weigh_more_in_the_loss(tiny_cfg, monkeypatch):
    """wh_reply_weight=4: each target that answers a wh-question gets weight 4 in the training
    step's objective, the others 1; at the default 1 no weights are made at all."""
    from vhred.dataset import collate
    from vhred.models import VHRED   # the tiny config's family
    from vhred.tokenizer import load_tokenizer
    seen = []
    real = VHRED.objective
    monkeypatch.setattr(VHRED, "objective", lambda self, out, *a, weights=None, **k: (
        seen.append(weights), real(self, out, *a, weights=weights, **k))[1])
    run = train(tiny_cfg("max_steps=3", "wh_reply_weight=4", "name=wh"), log=quiet)
    assert len(seen) == 3 and all(w is not None and set(w.tolist()) <= {1.0, 4.0} for w in seen)
    assert any(4.0 in w.tolist() for w in seen)   # the tiny slice asks wh-questions
    sp = load_tokenizer(model_bytes=run.tokenizer)
    b = collate([[sp.encode(t) for t in d] for d in (["Where is the bank ?", "Over there .", "Thanks ."],
                                                      ["Hello .", "What time is it ?", "Ten ."])])
    assert run.wh_replies(b).tolist() == [4.0, 1.0, 1.0, 4.0]   # targets in order: each answers the turn before
    seen.clear()
    plain = train(tiny_cfg("max_steps=2", "name=plain"), log=quiet)
    assert plain.wh_replies is None and seen == [None, None]


def test_hred_trains_too(tiny_cfg):
    run = train(tiny_cfg("model=hred", "max_steps=12"), log=quiet)
    assert run.progress.step == 12 and not hasattr(run.model, "prior_net")
    assert run.dir.endswith("tiny-hred")


def test_bf16_autocast_trains_with_fp32_weights(tiny_cfg):
    """precision=bf16 (autocast; the same code path a GPU takes by default) learns like fp32,
    and what it saves is fp32, so the checkpoint evaluates and chats the same way."""
    runs = {p: train(tiny_cfg(f"precision={p}", "max_steps=30", "log_every=1", f"name={p}"), log=quiet)
            for p in ("fp32", "bf16")}
    assert runs["bf16"].bf16 and not runs["fp32"].bf16
    nll = {p: [m["nll_per_token"] for m in read_metrics(r.dir) if m["split"] == "train"] for p, r in runs.items()}
    assert nll["bf16"][0] == pytest.approx(nll["fp32"][0], abs=0.05)   # the same first step, to bf16's precision
    assert sum(nll["bf16"][-5:]) / 5 < nll["bf16"][0] - 0.5             # and it learns
    assert abs(sum(nll["bf16"][-5:]) - sum(nll["fp32"][-5:])) / 5 < 0.3
    state = checkpoint.load(os.path.join(runs["bf16"].dir, "last.pt"))
    assert all(t.dtype == torch.float32 for t in state["model"].values() if t.is_floating_point())


def test_resume_continues_and_matches_an_uninterrupted_run(tiny_cfg):
    full = train(tiny_cfg("max_steps=40", "name=full"), log=quiet)
    train(tiny_cfg("max_steps=25", "name=split"), log=quiet)   # 25 steps: mid-epoch (29 per epoch)
    lines = []
    resumed = train(tiny_cfg("max_steps=40", "name=split"), log=lines.append)
    assert any("resuming" in line and "at step 25" in line for line in lines)
    assert resumed.progress.step == 40
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    walls = [json.loads(line)["wall_s"] for line in open(os.path.join(resumed.dir, "metrics.jsonl"))]
    saved = checkpoint.load(os.path.join(resumed.dir, "last.pt"))["progress"]["wall_s"]
    assert walls == sorted(walls) and 0 < walls[-1] <= saved   # a resumed run's clock goes on from its last.pt


def test_resume_reads_the_data_where_the_run_read_it_without_the_environment(tiny_cfg, monkeypatch):
    """The README's "run the same command again" in a new shell: $DAILYDIALOG_SRC is gone, and
    the run folder's config.json says where its data came from."""
    train(tiny_cfg("max_steps=3", "name=again"), log=quiet)
    monkeypatch.delenv("DAILYDIALOG_SRC")
    monkeypatch.setattr("vhred.sources.download", lambda *a, **k: pytest.fail("it went to the network"))
    lines = []
    assert train(tiny_cfg("max_steps=6", "name=again"), log=lines.append).progress.step == 6
    assert any("resuming" in line and "at step 3" in line for line in lines)


def test_resume_refuses_a_run_folder_of_another_shape(tiny_cfg):
    train(tiny_cfg("max_steps=3", "name=shape"), log=quiet)
    with pytest.raises(CheckpointError, match="other z_dim"):
        train(tiny_cfg("max_steps=3", "name=shape", "z_dim=4"), log=quiet)
    for other in ("batch_size=3", "seed=7"):   # its saved epoch and batch would point elsewhere in the data
        with pytest.raises(CheckpointError, match=f"other {other.split('=')[0]}; pass name=<new name>"):
            train(tiny_cfg("max_steps=6", "name=shape", other), log=quiet)


@pytest.mark.parametrize("override, message", [
    ("grad_clip=0", "grad_clip must be positive"),
    ("tokenizer_sentences=100", "tokenizer_sentences must be above 100"),
    ("gmp_components=3", "gmp_components is a setting of model=dialogwae, which model=vhred does not read"),
    ("utterance_drop=0.5", "utterance_drop is a setting of model=vhcr"),
    ("critic_steps=5", "critic_steps is a setting of model=dialogwae"),
    ("model=hred bow_weight=1", "bow_weight is a setting of model=vhred, cvae or vhcr, which model=hred does not read"),
    ("model=dialogwae bow_weight=0.5", "bow_weight is a setting of model=vhred, cvae or vhcr, which model=dialogwae"),
    ("model=cvae utterance_drop=0.1", "utterance_drop is a setting of model=vhcr, which model=cvae does not read"),
    ("model=cvea bow_weight=1", "model must be"),   # a misspelt model is said as such, not as a key it does not read
])
def test_settings_that_would_do_nothing_are_refused_at_start(override, message):
    with pytest.raises(ConfigError, match=message):
        config.load("configs/tiny.yaml", override.split())
    # 0, which a config file may give every family, is no setting to refuse; nor is any key at its default
    assert config.load("configs/dailydialog-cpu.yaml", ["model=hred", "bow_weight=0"]).arch.bow_weight == 0
    assert config.load("configs/tiny.yaml", ["model=vhred", "gmp_components=1"]).arch.gmp_components == 1


def test_each_familys_own_settings_are_declared_by_its_class():
    """The keys some families read, from the classes (OWN_SETTINGS), as each family's code reads them."""
    from vhred.models import readers
    assert readers("bow_weight") == ["vhred", "cvae", "vhcr"]   # the bag-of-words head (VHRED's, kept by both)
    assert readers("utterance_drop") == ["vhcr"]
    assert readers("gmp_components") == readers("critic_steps") == ["dialogwae"]
    assert readers("z_dim") == readers("lr") == []   # every family's


def test_a_familys_own_settings_are_taken_with_its_model_given_in_any_order():
    cfg = config.load("configs/tiny.yaml", ["gmp_components=3", "critic_steps=2", "model=dialogwae"])
    assert (cfg.arch.gmp_components, cfg.arch.critic_steps) == (3, 2)
    assert config.load("configs/tiny.yaml", ["model=vhcr", "utterance_drop=0.5"]).arch.utterance_drop == 0.5


def test_resume_survives_a_copied_source_but_not_other_data(tiny_cfg, dailydialog_zip, tmp_path, monkeypatch):
    """The source copied elsewhere (or re-downloaded, or touched) is prepared into a new data
    folder with the same files: the run resumes. Other data in the same run folder is refused."""
    first = train(tiny_cfg("max_steps=3", "name=moved"), log=quiet)
    copy = tmp_path / "elsewhere" / "ijcnlp_dailydialog.zip"
    copy.parent.mkdir()
    shutil.copy(dailydialog_zip, copy)
    os.utime(copy, (1e9, 1e9))
    monkeypatch.setenv("DAILYDIALOG_SRC", str(copy))
    lines = []
    resumed = train(tiny_cfg("max_steps=5", "name=moved"), log=lines.append)
    assert resumed.data_folder != first.data_folder and resumed.progress.step == 5
    assert any("resuming" in line and "at step 3" in line for line in lines)
    with pytest.raises(CheckpointError, match="other data"):
        train(tiny_cfg("max_steps=7", "name=moved", "max_dialogues=7"), log=quiet)


def test_resume_survives_its_data_prepared_again_by_a_newer_version(tiny_cfg, tmp_path, monkeypatch):
    """A newer vhred prepares the same data into a folder of another name (PREP_VERSION is in the
    name) and the user removes the old one, which data/README.md says is always safe: the run
    resumed on nothing ("other data; ... remove the run"). The checkpoint's record of the data's
    digests decides now; one saved before that record, by the data's settings and tokenizer."""
    from vhred import dataset
    cfg = lambda *o: tiny_cfg(f"data_dir={tmp_path / 'data'}", "name=kept", *o)
    run = train(cfg("max_steps=3"), log=quiet)
    last = os.path.join(run.dir, "last.pt")
    for version, recorded in ((dataset.PREP_VERSION + 1, True), (dataset.PREP_VERSION + 2, False)):
        if not recorded:   # as saved before the record
            state = checkpoint.load(last)
            del state["data_digests"]
            checkpoint.save(state, last)
        shutil.rmtree(run.data_folder)
        monkeypatch.setattr(dataset, "PREP_VERSION", version)
        lines = []
        step = run.progress.step
        run = train(cfg(f"max_steps={step + 2}"), log=lines.append)
        assert any(f"resuming {run.dir} at step {step}" in line for line in lines), lines
        assert any("is gone; resuming on" in line for line in lines) != recorded, lines
    state = checkpoint.load(last)
    del state["data_digests"]
    checkpoint.save(state, last)
    shutil.rmtree(run.data_folder)
    with pytest.raises(CheckpointError, match="other data"):   # other settings: other data
        train(cfg("max_steps=9", "max_dialogues=100"), log=quiet)


def wait_for_step(path, step, proc, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        if os.path.exists(path):
            try:
                if checkpoint.load(path)["progress"]["step"] >= step:
                    return
            except CheckpointError:
                pass   # being replaced right now
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    raise AssertionError("no checkpoint in time")


@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_killed_run_resumes_from_its_last_checkpoint(cli_args, tmp_path):
    last = tmp_path / "runs" / "tiny-vhred" / "last.pt"
    proc = subprocess.Popen(train_cli(*cli_args, "epochs=1000"), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    wait_for_step(last, 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = checkpoint.load(str(last))["progress"]["step"]
    done = subprocess.run(train_cli(*cli_args, f"max_steps={saved + 7}"), cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"at step {saved}" in done.stdout
    assert checkpoint.load(str(last))["progress"]["step"] == saved + 7


@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_ctrl_c_saves_and_exits_cleanly(cli_args, tmp_path):
    last = tmp_path / "runs" / "tiny-vhred" / "last.pt"
    proc = subprocess.Popen(train_cli(*cli_args, "epochs=1000", "save_every=1000"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "runs" / "tiny-vhred" / "metrics.jsonl"
    start = time.time()
    while not metrics.exists() and time.time() - start < 120:   # the first log line: training runs
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    step = checkpoint.load(str(last))["progress"]["step"]
    assert step >= 1 and f"stopped at step {step}" in out


@pytest.mark.slow   # a subprocess: a command as a user runs it
@pytest.mark.parametrize("args,message", [
    (["--config", "configs/nope.yaml"], "config file configs/nope.yaml not found"),
    (["--config", "configs/tiny.yaml", "z_dimm=3"], "did you mean z_dim"),
    (["--config", "configs/tiny.yaml", "data=missing.jsonl"], "data file missing.jsonl not found"),
    (["--config", "configs/tiny.yaml", "data=configs"], "data file configs is a folder (give data=dailydialog or a path"),
])
def test_user_errors_are_one_line(args, message):
    r = subprocess.run([sys.executable, "-m", "vhred.train", *args], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and message in r.stderr, r.stderr


def test_non_finite_losses_skip_updates_then_stop_the_run(tiny_cfg, monkeypatch):
    from vhred import train as train_mod
    from vhred.models import VHRED   # the tiny config's family
    real_forward = VHRED.forward
    calls = {"n": 0}

    def flaky(self, *args):
        out = real_forward(self, *args)
        calls["n"] += 1
        if self.training and 5 <= calls["n"] < 8:   # three bad steps, then fine again
            out["nll"] = out["nll"] * float("nan")
        return out
    monkeypatch.setattr(VHRED, "forward", flaky)
    run = train(tiny_cfg("max_steps=12", "name=flaky"), log=quiet)
    assert run.progress.skipped_total == 3 and run.progress.step == 12
    assert all(torch.isfinite(p).all() for p in run.model.parameters())

    def broken(self, *args):
        out = real_forward(self, *args)
        out["nll"] = out["nll"] * float("inf")
        return out
    monkeypatch.setattr(VHRED, "forward", broken)
    monkeypatch.setattr(train_mod, "MAX_BAD_STEPS", 4)
    with pytest.raises(train_mod.TrainingError, match="NaN/inf for 4 steps in a row .*no checkpoint was written yet"):
        train(tiny_cfg("max_steps=12", "name=broken"), log=quiet)   # broken from the first step: nothing saved


def test_last_pt_is_not_rewritten_while_the_loss_is_nan(tiny_cfg, monkeypatch):
    """Weights can stay finite while every loss is NaN (a learning rate far too high): the
    checkpoint saves falling inside that streak must keep the last good last.pt, which the
    error then names, and whose resume starts with no bad steps counted."""
    from vhred import train as train_mod
    from vhred.models import VHRED   # the tiny config's family
    real_forward = VHRED.forward
    calls = {"n": 0}

    def turns_nan(self, *args):
        out = real_forward(self, *args)
        calls["n"] += self.training
        if self.training and calls["n"] > 8:   # steps 1-8 good, then NaN for good
            out["nll"] = out["nll"] * float("nan")
        return out
    monkeypatch.setattr(VHRED, "forward", turns_nan)
    monkeypatch.setattr(train_mod, "MAX_BAD_STEPS", 6)
    cfg = tiny_cfg("max_steps=20", "save_every=4", "eval_every=0", "name=nan-streak")
    with pytest.raises(train_mod.TrainingError, match="NaN/inf for 6 steps in a row .*last.pt holds the last good state"):
        train(cfg, log=quiet)   # the streak passes step 12, a save step
    progress = checkpoint.load(os.path.join(cfg.out_dir, "nan-streak", "last.pt"))["progress"]
    assert progress["step"] == 8 and progress["bad_steps"] == 0


def test_a_run_whose_validation_is_never_finite_ends_in_an_error_not_done(tiny_cfg, monkeypatch):
    """Skipped steps that never come 4 in a row, and a validation ELBO that is NaN every time: no
    best.pt is written, so the run ends in one line saying it diverged, not "done ... best.pt"."""
    from vhred import train as train_mod
    from vhred.models import VHRED   # the tiny config's family
    real_forward = VHRED.forward
    calls = {"n": 0}

    def diverging(self, *args):
        out = real_forward(self, *args)
        calls["n"] += 1
        if not self.training or calls["n"] % 2:
            out["nll"] = out["nll"] * float("nan")
        return out
    monkeypatch.setattr(VHRED, "forward", diverging)
    monkeypatch.setattr(train_mod, "MAX_BAD_STEPS", 4)
    cfg = tiny_cfg("max_steps=12", "name=diverged", "lr=0.5")
    with pytest.raises(train_mod.TrainingError, match=r"the run diverged: .* no best.pt was written; lower lr= \(now 0.5\)"):
        train(cfg, log=quiet)
    assert not os.path.exists(os.path.join(cfg.out_dir, "diverged", "best.pt"))


def test_a_second_trainer_on_the_same_run_folder_is_refused(tiny_cfg, tmp_path):
    from vhred.train import lock_run_dir
    folder = tmp_path / "runs" / "tiny-vhred"
    folder.mkdir(parents=True)
    held = lock_run_dir(str(folder))
    try:
        with pytest.raises(CheckpointError, match=f"in use by another training process \\(pid {os.getpid()}\\)"):
            train(tiny_cfg("max_steps=2"), log=quiet)
    finally:
        held.close()
    assert train(tiny_cfg("max_steps=2"), log=quiet).progress.step == 2   # free again


def test_a_kl_warmup_longer_than_the_run_is_a_warning(tiny_cfg):
    lines = []
    run = train(tiny_cfg("epochs=1", "kl_warmup_steps=5000", "name=warm"), log=lines.append)
    steps = run.progress.step   # one epoch of the corpus in use: 29 on DailyDialog's slice
    assert steps > 10 and any(f"kl_warmup_steps=5000 is as long as the whole run or longer ({steps} steps)" in line
                              for line in lines)


def test_linear_kl_warmup():
    cfg = Config(kl_schedule="linear", kl_warmup_steps=100, kl_max=1.0)
    assert kl_weight(0, cfg) == 0.0
    assert kl_weight(50, cfg) == 0.5
    assert kl_weight(100, cfg) == 1.0 and kl_weight(10_000, cfg) == 1.0


def test_cyclical_kl_restarts_each_cycle():
    cfg = Config(kl_schedule="cyclical", kl_warmup_steps=50, kl_cycle_steps=100, kl_max=0.8)
    assert [kl_weight(s, cfg) for s in (0, 25, 50, 99, 100, 125)] == [0.0, 0.4, 0.8, 0.8, 0.0, 0.4]
    for cycle in (50, 1):   # a cycle of the ramp alone never reaches kl_max (at 1: beta always 0)
        with pytest.raises(ConfigError, match=f"kl_cycle_steps must be above kl_warmup_steps .*got {cycle} and 50"):
            config.validate(Config(kl_schedule="cyclical", kl_warmup_steps=50, kl_cycle_steps=cycle))
    config.validate(Config(kl_schedule="cyclical", kl_warmup_steps=50, kl_cycle_steps=51))


def test_a_cyclical_schedule_validates_at_each_cycles_end():
    """Where beta has held kl_max (a cycle's last step), not a few steps into the next ramp."""
    cyc = Config(kl_schedule="cyclical", kl_warmup_steps=100, kl_cycle_steps=200)
    assert [s for s in range(1, 1001) if validation_due(s, cyc)] == [200, 400, 600, 800, 1000]
    assert kl_weight(199, cyc) == cyc.kl_max and kl_weight(200, cyc) == 0.0   # step 200 is the 201st
    both = Config(kl_schedule="cyclical", kl_warmup_steps=100, kl_cycle_steps=200, eval_every=150)
    assert [s for s in range(1, 601) if validation_due(s, both)] == [150, 200, 300, 400, 450, 600]
    for other in (Config(kl_schedule="linear", kl_warmup_steps=200), Config(kl_schedule="constant"),
                  Config(kl_schedule="cyclical", kl_warmup_steps=0)):   # no ramp: nothing to wait for
        assert not any(validation_due(s, other) for s in range(1, 1001))
    assert [s for s in range(1, 301) if validation_due(s, Config(eval_every=100))] == [100, 200, 300]
    assert not any(validation_due(s, cyc, has_kl=False) for s in range(1, 1001))   # HRED, DialogWAE: no beta
    assert [s for s in range(1, 301) if validation_due(s, both, has_kl=False)] == [150, 300]


def test_a_cyclical_run_validates_at_cycle_ends_and_epoch_ends(tiny_cfg):
    """Each cycle gives best.pt and patience a figure at full weight; an epoch's end is validated
    too (the log says when it falls in a ramp), and a cycle end that is an epoch's end once. A
    family without a KL term has no beta to wait for: it validates at epoch ends only."""
    per_epoch = train(tiny_cfg("epochs=1", "max_dialogues=40", "name=count"), log=quiet).progress.step
    cycle = per_epoch // 2 + 1   # the cycle ends apart from the epoch ends, except where they meet
    cyclical = ("epochs=3", "max_dialogues=40", "kl_schedule=cyclical", "kl_warmup_steps=2", f"kl_cycle_steps={cycle}")
    lines = []
    run = train(tiny_cfg(*cyclical), log=lines.append)
    val = [r["step"] for r in read_metrics(run.dir) if r["split"] == "val"]
    ends = sorted(set(range(cycle, 3 * per_epoch + 1, cycle)) | {per_epoch, 2 * per_epoch, 3 * per_epoch})
    assert val == ends
    ramp = [s for s in val if kl_weight(s - 1, run.cfg) < run.cfg.kl_max]
    assert ramp, "the test needs an epoch end inside a ramp"
    said = [line for line in lines if "validation:" in line and "below full weight the KL runs high" in line]
    assert [int(line.split()[1]) for line in said] == ramp
    lines = []
    hred = train(tiny_cfg(*cyclical, "model=hred", "name=hred-cyclical"), log=lines.append)
    assert [r["step"] for r in read_metrics(hred.dir) if r["split"] == "val"] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert not any("KL weight" in line for line in lines)


def test_constant_kl_and_learning_rate_warmup():
    assert kl_weight(0, Config(kl_schedule="constant", kl_max=0.3)) == 0.3
    cfg = Config(lr=1e-3, lr_warmup_steps=10)
    assert learning_rate(0, cfg) == 1e-4 and learning_rate(9, cfg) == 1e-3 and learning_rate(500, cfg) == 1e-3


def test_learning_rate_decays_along_a_half_cosine_to_a_tenth():
    cfg = Config(lr=1e-3, lr_warmup_steps=10, lr_decay_steps=100)
    assert learning_rate(9, cfg) == 1e-3 and learning_rate(10, cfg) == pytest.approx(1e-3)
    assert learning_rate(60, cfg) == pytest.approx((1e-3 + 1e-4) / 2)          # half way: the mean of the ends
    assert learning_rate(35, cfg) == pytest.approx(1e-4 + 9e-4 * (1 + math.cos(math.pi / 4)) / 2)
    assert learning_rate(110, cfg) == pytest.approx(1e-4) and learning_rate(5000, cfg) == pytest.approx(1e-4)


# no randomness inside the step (HRED, no word dropout), so the two runs can match closely
SAME = ["model=hred", "word_dropout=0", "max_steps=12", "log_every=1", "lr_warmup_steps=0"]


def train_cmd(data_dir, out, name, nproc):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    return launcher + ["-m", "vhred.train", "--config", os.path.join(ROOT, "configs", "tiny.yaml"),
                       f"data_dir={data_dir}", f"out_dir={out}", f"name={name}", *SAME]


@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_two_processes_train_like_one_with_the_same_global_batch(dailydialog_zip, data_dir, tmp_path):
    env = {**os.environ, "DAILYDIALOG_SRC": dailydialog_zip, "OMP_NUM_THREADS": "1"}
    for name, nproc in (("one", 1), ("two", 2)):
        r = subprocess.run(train_cmd(data_dir, tmp_path, name, nproc), cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, child_errors(r)
    one, two = (checkpoint.load(str(tmp_path / n / "last.pt")) for n in ("one", "two"))
    assert one["progress"]["step"] == two["progress"]["step"] == 12
    for key, a in one["model"].items():
        assert torch.allclose(a, two["model"][key], atol=2e-3), key
    loss = {n: [json.loads(l)["loss"] for l in open(tmp_path / n / "metrics.jsonl") if '"train"' in l]
            for n in ("one", "two")}
    assert loss["two"] == pytest.approx(loss["one"], rel=1e-3)
    assert sum(loss["two"][-3:]) < sum(loss["two"][:3])   # and it learns


def scripted_validation(values):
    """elbo_metrics replaced by a script of validation ELBOs, one per call."""
    it = iter(values)

    def fake(*args, **kwargs):
        v = next(it)
        return {"elbo_per_token": v, "ppl": 1.0, "nll_per_token": v, "kl_per_utt": 0.0, "active_units": 0}
    return fake


def test_early_stopping_stops_after_patience_epochs(tiny_cfg, monkeypatch):
    # best at epoch 2, then two epochs without improvement: patience 2 stops after epoch 4 of 10
    monkeypatch.setattr(train_module, "elbo_metrics", scripted_validation([5.0, 4.0, 4.0, 4.5, 3.0, 3.0]))
    run = train(tiny_cfg("epochs=10", "patience=2", "max_dialogues=40"), log=lambda *_: None)
    p = run.progress
    assert (p.epoch, p.best_epoch, p.best) == (4, 2, 4.0)
    val = [json.loads(line) for line in open(os.path.join(run.dir, "metrics.jsonl")) if '"val"' in line]
    assert [v["elbo_per_token"] for v in val] == [5.0, 4.0, 4.0, 4.5]


def test_a_best_found_mid_epoch_is_that_epochs_for_patience(tiny_cfg, monkeypatch):
    """With eval_every, a best found in the middle of epoch 2 is epoch 2's: patience 1 trains
    epoch 3 too (it stopped at the end of epoch 2, naming epoch 1 as the best's)."""
    monkeypatch.setattr(train_module, "elbo_metrics", scripted_validation([5.0]))
    per_epoch = train(tiny_cfg("epochs=1", "max_dialogues=40", "name=count"), log=lambda *_: None).progress.step
    assert per_epoch >= 2
    # validations: end of epoch 1 (5.0), halfway through epoch 2 (4.0, the best), end of epoch 2, ...
    monkeypatch.setattr(train_module, "elbo_metrics", scripted_validation([5.0, 4.0, 4.5] + [4.6 + i / 10 for i in range(20)]))
    lines = []
    run = train(tiny_cfg("epochs=10", "patience=1", "max_dialogues=40", f"eval_every={per_epoch + per_epoch // 2}"),
                log=lines.append)
    assert (run.progress.epoch, run.progress.best_epoch, run.progress.best) == (3, 2, 4.0)
    assert "best validation ELBO/token 4.000 (epoch 2)" in lines[-1]


def test_an_eval_every_that_ends_an_epoch_validates_it_once(tiny_cfg):
    per_epoch = train(tiny_cfg("epochs=1", "max_dialogues=40", "name=count"), log=quiet).progress.step
    run = train(tiny_cfg("epochs=2", "max_dialogues=40", f"eval_every={per_epoch}"), log=quiet)
    val = [(r["step"], r["epoch"]) for r in read_metrics(run.dir) if r["split"] == "val"]
    assert val == [(per_epoch, 1), (2 * per_epoch, 2)]   # one row a validated state, not two; epochs completed


def test_a_run_killed_between_checkpoints_logs_each_step_once(tiny_cfg):
    """A kill after rows past last.pt's step: the resumed run replays those steps, and its
    metrics.jsonl holds each once, as the uninterrupted run's does; a line cut short goes too."""
    full = train(tiny_cfg("max_steps=20", "name=full"), log=quiet)
    run = train(tiny_cfg("max_steps=15", "name=killed", "save_every=10"), log=quiet)
    state = checkpoint.load(os.path.join(run.dir, "last.pt"))
    state["progress"]["step"] = 10   # last.pt as a kill at step 15 leaves it: from step 10, rows to 15
    done = train(tiny_cfg("max_steps=10", "name=at10", "save_every=10"), log=quiet)
    shutil.copy(os.path.join(done.dir, "last.pt"), os.path.join(run.dir, "last.pt"))
    with open(os.path.join(run.dir, "metrics.jsonl"), "a") as f:
        f.write('{"split": "train", "st')   # the kill cut this row short
    train(tiny_cfg("max_steps=20", "name=killed", "save_every=10"), log=quiet)
    steps = lambda d: [(r["split"], r["step"]) for r in read_metrics(d)]
    assert steps(run.dir) == steps(full.dir)
    assert [r["nll_per_token"] for r in read_metrics(run.dir)] == pytest.approx(
        [r["nll_per_token"] for r in read_metrics(full.dir)], abs=1e-5)


def test_a_run_killed_between_a_validation_and_its_save_logs_it_once(tiny_cfg):
    """last.pt is saved at a step before that step's validation: a kill between the two leaves
    the validation's row, which the resumed run logs again, so the resume drops it first."""
    full = train(tiny_cfg("max_steps=20", "save_every=10", "name=full"), log=quiet)
    run = train(tiny_cfg("max_steps=20", "save_every=10", "name=killed"), log=quiet)
    path = os.path.join(run.dir, "last.pt")
    state = checkpoint.load(path)
    assert state["progress"]["last_val_step"] == 20
    state["progress"]["last_val_step"] = -1   # last.pt as the save before step 20's validation left it
    checkpoint.save(state, path)
    train(tiny_cfg("max_steps=20", "save_every=10", "name=killed"), log=quiet)
    steps = lambda d: [(r["split"], r["step"]) for r in read_metrics(d)]
    assert steps(run.dir) == steps(full.dir) and steps(run.dir).count(("val", 20)) == 1


def test_a_run_started_afresh_in_its_folder_keeps_no_rows_of_the_old_one(tiny_cfg):
    """No last.pt (killed before its first save, or removed to start over): the run begins a new
    metrics.jsonl rather than adding to rows the curves would mix with its own."""
    full = train(tiny_cfg("max_steps=10", "name=full"), log=quiet)
    run = train(tiny_cfg("max_steps=14", "name=again"), log=quiet)
    os.remove(os.path.join(run.dir, "last.pt"))
    train(tiny_cfg("max_steps=10", "name=again"), log=quiet)
    steps = lambda d: [(r["split"], r["step"]) for r in read_metrics(d)]
    assert steps(run.dir) == steps(full.dir)


def test_a_kl_warmup_longer_than_the_epochs_is_warned_of(tiny_cfg, monkeypatch):
    """max_steps above what the epochs reach: the warning reads the length the epochs give."""
    monkeypatch.setattr(train_module, "elbo_metrics", scripted_validation([5.0]))
    lines = []
    run = train(tiny_cfg("epochs=1", "max_dialogues=40", "max_steps=1000", "kl_schedule=linear",
                         "kl_warmup_steps=500"), log=lines.append)
    assert run.progress.step < 500 and any("kl_warmup_steps=500 is as long as the whole run or longer" in l for l in lines)


def test_patience_zero_trains_every_epoch(tiny_cfg, monkeypatch):
    monkeypatch.setattr(train_module, "elbo_metrics", scripted_validation([4.0, 5.0, 6.0]))
    run = train(tiny_cfg("epochs=3", "max_dialogues=40"), log=lambda *_: None)
    assert (run.progress.epoch, run.progress.best_epoch) == (3, 1)


def test_a_run_stopped_before_its_first_log_line_ends_without_a_curves_warning(tmp_path):
    """It said "warning: no training curves (... not found; is ... a run folder?)" of a run folder."""
    from types import SimpleNamespace
    from vhred.train import Progress, _finish
    logs = []
    run = SimpleNamespace(dir=str(tmp_path), log=logs.append, stopped=True, progress=Progress(step=13))
    _finish(run)
    assert logs == [f"stopped at step 13; saved {tmp_path}/last.pt. Run the same command to resume."]
