"""Model shapes, padding masks, and the packed decoder against a step-by-step one."""
import pytest
import torch

from vhred.config import Config
from vhred.dataset import collate
from vhred.model import VHRED, objective

TINY = dict(vocab_size=50, emb_dim=16, utt_hidden=12, ctx_hidden=14, dec_hidden=18, z_dim=6,
            latent_hidden=10, word_dropout=0.0)


def toy_batch():
    # two dialogues: 3 and 2 utterances of token ids >= 4 (0-3 are specials)
    return collate([[[5, 6, 7], [8, 9], [10, 11, 12, 13]], [[14], [15, 16, 17, 18, 19]]])


@pytest.mark.parametrize("kind", ["vhred", "hred"])
def test_forward_shapes(kind):
    torch.manual_seed(0)
    model = VHRED(Config(model=kind, **TINY))
    b = toy_batch()
    out = model(b.tokens, b.lens, b.turns)
    assert out["nll"].shape == (3,)                  # U - B = 5 - 2 targets
    assert out["n_tokens"] == (2 + 1) + (4 + 1) + (5 + 1)
    if kind == "vhred":
        assert out["kl"].shape == (3, 6) and out["post_mean"].shape == (3, 6)
    else:
        assert "kl" not in out and not hasattr(model, "prior_net")
    assert torch.isfinite(objective(out, beta=1.0))


def test_padding_does_not_change_the_loss():
    torch.manual_seed(0)
    model = VHRED(Config(**TINY)).eval()
    b = toy_batch()
    torch.manual_seed(1)
    ref = model(b.tokens, b.lens, b.turns)["nll"]
    wide = torch.cat([b.tokens, torch.randint(4, 50, (len(b.tokens), 5))], dim=1)   # junk past the end
    wide[:, :b.tokens.shape[1]][b.tokens == 0] = 7                                                       # junk in the padding
    torch.manual_seed(1)
    assert torch.allclose(model(wide, b.lens, b.turns)["nll"], ref, atol=1e-5)


def test_packed_decoder_equals_step_by_step_decoding():
    torch.manual_seed(0)
    model = VHRED(Config(**TINY)).eval()
    tokens = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]])
    lens = torch.tensor([4, 2])
    cond = torch.randn(2, 14 + 6)
    packed = model.reconstruction_nll(tokens, lens, cond)
    for i in range(2):
        state, nll = model.decoder_state(cond[i:i + 1]), 0.0
        for t in range(lens[i]):
            logits, state = model.decode(tokens[i:i + 1, t:t + 1], cond[i:i + 1], state)
            nll -= torch.log_softmax(logits[0, 0], -1)[tokens[i, t + 1]].item()
        assert abs(packed[i].item() - nll) < 1e-4


def test_word_dropout_only_in_training():
    torch.manual_seed(0)
    model = VHRED(Config(**{**TINY, "word_dropout": 0.9}))
    b = toy_batch()
    cond = torch.zeros(len(b.lens), 14 + 6)
    model.eval()
    a = model.reconstruction_nll(b.tokens, b.lens - 1, cond)
    assert torch.equal(a, model.reconstruction_nll(b.tokens, b.lens - 1, cond))
    model.train()
    assert not torch.allclose(a, model.reconstruction_nll(b.tokens, b.lens - 1, cond))


@pytest.mark.parametrize("kind", ["vhred", "hred"])
def test_overfits_one_batch(kind):
    torch.manual_seed(0)
    model = VHRED(Config(model=kind, bow_weight=1.0, **TINY))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    b = toy_batch()
    losses = []
    for _ in range(150):
        out = model(b.tokens, b.lens, b.turns)
        loss = objective(out, beta=0.1, bow_weight=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(out["nll"].sum().item() / out["n_tokens"])
    assert losses[-1] < 0.2 * losses[0]


def test_tied_embeddings_share_one_tensor():
    model = VHRED(Config(**TINY, tie_embeddings=True))
    assert model.lm_head.weight is model.embed.weight
    untied = VHRED(Config(**TINY, tie_embeddings=False))
    assert untied.lm_head.weight is not untied.embed.weight
