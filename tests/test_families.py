"""The model family (vhred/models/): every family trains, saves, loads, answers, scores and
resumes bit for bit on the tiny config; the pieces that set the families apart are checked
against independent computations."""
import os

import pytest
import torch

import vhred
from vhred import checkpoint
from vhred.config import ModelConfig
from vhred.dataset import collate
from vhred.models import FAMILIES, build
from vhred.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "format1-tiny.pt")
TINY = dict(emb_dim=16, utt_hidden=16, ctx_hidden=16, dec_hidden=16, z_dim=4, latent_hidden=16)
LATENT = [name for name in FAMILIES if name != "hred"]
quiet = lambda *_: None


def _batch(vocab=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    dialogues = [[torch.randint(4, vocab, (int(n),), generator=g).tolist() for n in lens]
                 for lens in ([3, 5, 2], [4, 1], [6, 2, 3, 2])]
    return collate(dialogues)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_meets_the_contract_on_a_batch(family):
    """forward gives the terms the trainer needs, the objective is finite and reaches every
    weight it should, and the test bound's weights are finite."""
    torch.manual_seed(0)
    model = build(ModelConfig(model=family, **TINY), 40)
    b = _batch()
    out = model(b.tokens, b.lens, b.turns)
    first = torch.cumsum(b.turns, 0) - b.turns                             # each dialogue's first utterance
    targets = torch.ones(len(b.lens), dtype=torch.bool).index_fill(0, first, False)
    assert out["nll"].shape == (6,) and out["n_tokens"] == int((b.lens[targets] - 1).sum())
    loss = model.objective(out, beta=1.0)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.embed.weight.grad.abs().sum() > 0
    w, n = model.log_weights(b.tokens, b.lens, b.turns, 3)
    assert torch.isfinite(w).all() and w.shape[1] == 3 and n == out["n_tokens"]
    assert model.latent == (family != "hred") and ("post_mean" in out) == model.latent
