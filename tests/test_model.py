"""The model: shapes, padding, the packed decoder against a step-by-step one, and the latent-variable maths against torch.distributions."""
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from vhred.config import ModelConfig
from vhred.dataset import collate
from vhred.metrics.likelihood import active_units
from vhred.model import VHRED, GaussianNet, gaussian_kl, objective, reparameterize

V = 50
TINY = dict(emb_dim=16, utt_hidden=12, ctx_hidden=14, dec_hidden=18, z_dim=6,
            latent_hidden=10, word_dropout=0.0)


def toy_batch():
    # two dialogues: 3 and 2 utterances of token ids >= 4 (0-3 are specials)
    return collate([[[5, 6, 7], [8, 9], [10, 11, 12, 13]], [[14], [15, 16, 17, 18, 19]]])


@pytest.mark.parametrize("kind", ["vhred", "hred"])
def test_forward_shapes(kind):
    torch.manual_seed(0)
    model = VHRED(ModelConfig(model=kind, **TINY), V)
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
    model = VHRED(ModelConfig(**TINY), V).eval()
    b = toy_batch()
    torch.manual_seed(1)
    ref = model(b.tokens, b.lens, b.turns)["nll"]
    wide = torch.cat([b.tokens, torch.randint(4, 50, (len(b.tokens), 5))], dim=1)   # junk past the end
    wide[:, :b.tokens.shape[1]][b.tokens == 0] = 7                                                       # junk in the padding
    torch.manual_seed(1)
    assert torch.allclose(model(wide, b.lens, b.turns)["nll"], ref, atol=1e-5)


def test_packed_decoder_equals_step_by_step_decoding():
    torch.manual_seed(0)
    model = VHRED(ModelConfig(**TINY), V).eval()
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
    model = VHRED(ModelConfig(**{**TINY, "word_dropout": 0.9}), V)
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
    model = VHRED(ModelConfig(model=kind, bow_weight=1.0, **TINY), V)
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
    model = VHRED(ModelConfig(**TINY, tie_embeddings=True), V)
    assert model.lm_head.weight is model.embed.weight
    untied = VHRED(ModelConfig(**TINY, tie_embeddings=False), V)
    assert untied.lm_head.weight is not untied.embed.weight


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mq, lq, mp, lp = (torch.randn(5, 7, generator=g) for _ in range(4))
    ours = gaussian_kl(mq, lq, mp, lp)
    ref = kl_divergence(Normal(mq, torch.exp(0.5 * lq)), Normal(mp, torch.exp(0.5 * lp)))
    assert torch.allclose(ours, ref, atol=1e-5)


def test_kl_is_zero_for_equal_gaussians_and_positive_otherwise():
    m, lv = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.allclose(gaussian_kl(m, lv, m, lv), torch.zeros(3, 4), atol=1e-6)
    assert (gaussian_kl(m + 1, lv, m, lv) > 0).all()


def test_reparameterized_sample_has_the_right_moments():
    torch.manual_seed(0)
    mean, logvar = torch.full((200_000,), 2.0), torch.full((200_000,), 2 * torch.log(torch.tensor(3.0)))
    z = reparameterize(mean, logvar)
    assert abs(z.mean().item() - 2.0) < 0.03 and abs(z.std().item() - 3.0) < 0.03


def test_gradients_reach_the_posterior_network_through_the_sample():
    torch.manual_seed(0)
    net = GaussianNet(6, 8, 4)
    mean, logvar = net(torch.randn(10, 6))
    z = reparameterize(mean, logvar)
    (z ** 2).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_objective_is_per_token_and_free_bits_floor_each_dimension():
    out = {"nll": torch.tensor([3.0, 5.0]), "n_tokens": 4,
           "kl": torch.tensor([[0.1, 2.0], [0.3, 4.0]])}
    # (8 + 0.5 * 6.4) / 4
    assert torch.isclose(objective(out, beta=0.5), torch.tensor(2.8))
    # batch-mean KL per dim is (0.2, 3.0); free bits 1.0 lifts the first to 1.0: sum = 2 * (1 + 3)
    assert torch.isclose(objective(out, beta=1.0, free_bits=1.0), torch.tensor((8 + 8) / 4))
    out["bow"] = torch.tensor([1.0, 3.0])   # per target
    assert torch.isclose(objective(out, beta=0.0, bow_weight=0.5), torch.tensor((8 + 2) / 4))


def test_free_bits_under_data_parallelism_give_one_process_gradient():
    """Each rank floors its share of the batch by the whole batch's mean: one dimension at
    KL (0, 0, 0.08, 0.08) has batch mean 0.04 < 0.05, so one process gives it no gradient; a rank
    that floored its own mean (0.08 on the second) would."""
    kl = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.08, 3.0], [0.08, 4.0]], requires_grad=True)
    nll = torch.tensor([1.0, 2.0, 3.0, 4.0])
    loss = lambda rows, reduce=None: objective({"nll": nll[rows], "kl": kl[rows], "n_tokens": 1}, 1.0, 0.05,
                                               n_tokens=1, reduce=reduce)
    one, = torch.autograd.grad(loss(slice(None)), kl)
    assert one.tolist() == [[0.0, 1.0]] * 4
    shares = (slice(0, 2), slice(2, 4))
    detached = [torch.cat([kl[r].sum(0).detach(), torch.tensor([2.0])]) for r in shares]
    sums = [loss(r, reduce=lambda t, other=detached[1 - i]: t.add_(other)) for i, r in enumerate(shares)]
    two, = torch.autograd.grad(sums[0] + sums[1], kl)   # DDP sums each rank's gradient
    assert torch.equal(two, one)
    assert torch.isclose(sums[0] + sums[1], loss(slice(None)))


def test_a_target_of_weight_k_counts_as_k_copies_of_it():
    """config.wh_reply_weight: weights (1, 3) give the loss of the batch with the second target
    three times over, free bits on the batch mean and the bag-of-words loss included."""
    out = {"nll": torch.tensor([3.0, 5.0]), "n_tokens": 4, "kl": torch.tensor([[0.1, 2.0], [0.3, 4.0]]),
           "bow": torch.tensor([10.0, 20.0])}
    copies = {"nll": torch.tensor([3.0, 5.0, 5.0, 5.0]), "n_tokens": 4,
              "kl": torch.tensor([[0.1, 2.0], [0.3, 4.0], [0.3, 4.0], [0.3, 4.0]]),
              "bow": torch.tensor([10.0, 20.0, 20.0, 20.0])}
    for beta, free_bits, bow_weight in ((0.5, 0.0, 0.0), (1.0, 0.5, 1.0), (1.0, 3.5, 0.5)):
        weighted = objective(out, beta, free_bits, bow_weight, weights=torch.tensor([1.0, 3.0]))
        assert torch.isclose(weighted, objective(copies, beta, free_bits, bow_weight)), (beta, free_bits)
    assert torch.equal(objective(out, 1.0, 0.5, weights=torch.ones(2)), objective(out, 1.0, 0.5))


def test_active_units_counts_dimensions_whose_posterior_mean_varies():
    means = torch.zeros(100, 3)
    means[:, 0] = torch.linspace(-1, 1, 100)   # variance ~0.34
    means[:, 1] = 0.001 * torch.linspace(-1, 1, 100)
    assert active_units(means) == 1


def test_active_units_from_running_moments_equal_the_whole_matrix():
    """Sums of batches, split over two "ranks" and added (the all-reduce), count the same
    active units as the whole matrix of posterior means."""
    from vhred.metrics.likelihood import _add_batch, _elbo_figures
    x = torch.randn(100, 6) * torch.tensor([0.0, 0.05, 0.09, 0.11, 1.0, 2.0])
    ranks = [torch.zeros(6 + 12, dtype=torch.float64) for _ in range(2)]
    for i, part in enumerate(x.split(17)):   # batches of a validation pass, dealt to the ranks
        out = {"nll": torch.ones(len(part)), "kl": torch.zeros(len(part), 6), "post_mean": part, "n_tokens": 3}
        _add_batch(ranks[i % 2], out, 6)
    figures = _elbo_figures(ranks[0] + ranks[1], 6)
    assert figures["active_units"] == active_units(x) == 3
    assert (figures["utterances"], figures["tokens"], figures["nll_per_token"]) == (100, 18, 100 / 18)


def test_packing_on_the_host_equals_torchs_own():
    """Packing sorts on the host; the packed data, the final states and the rows it names
    match pack_padded_sequence and pad_packed_sequence."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from vhred.model import Packing
    torch.manual_seed(0)
    lens = torch.tensor([3, 5, 1, 5, 2])
    x = torch.randn(5, 5, 4)
    gru = torch.nn.GRU(4, 3, batch_first=True)
    ours, h_ours = gru(Packing(lens, "cpu")(x))
    theirs, h_theirs = gru(pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False))
    assert torch.equal(ours.data, theirs.data) and torch.equal(h_ours, h_theirs)
    padded, _ = pad_packed_sequence(theirs, batch_first=True)
    seq, t = torch.tensor([1, 0, 4, 3]), torch.tensor([4, 2, 1, 0])
    assert torch.equal(ours.data[Packing(lens, "cpu").rows(seq, t)], padded[seq, t])
