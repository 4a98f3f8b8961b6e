"""The training recipe's early stopping: `patience` epochs without a better validation ELBO end
the run, and the best epoch is the one kept."""
import json
import os

from vhred import train as train_module
from vhred.train import train


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


def test_patience_zero_trains_every_epoch(tiny_cfg, monkeypatch):
    monkeypatch.setattr(train_module, "elbo_metrics", scripted_validation([4.0, 5.0, 6.0]))
    run = train(tiny_cfg("epochs=3", "max_dialogues=40"), log=lambda *_: None)
    assert (run.progress.epoch, run.progress.best_epoch) == (3, 1)
