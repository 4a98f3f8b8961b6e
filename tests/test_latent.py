"""The VHRED maths against independent computation."""
import torch
from torch.distributions import Normal, kl_divergence

from vhred.model import GaussianNet, active_units, gaussian_kl, objective, reparameterize


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
    out["bow"] = torch.tensor(4.0)
    assert torch.isclose(objective(out, beta=0.0, bow_weight=0.5), torch.tensor((8 + 2) / 4))


def test_active_units_counts_dimensions_whose_posterior_mean_varies():
    means = torch.zeros(100, 3)
    means[:, 0] = torch.linspace(-1, 1, 100)   # variance ~0.34
    means[:, 1] = 0.001 * torch.linspace(-1, 1, 100)
    assert active_units(means) == 1
