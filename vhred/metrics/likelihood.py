"""Likelihood-side metrics of a model on a split: the negative ELBO per token and its parts,
the importance-weighted bound, perplexity and active units."""
import math

import torch


def perplexity(nats_per_token: float) -> float:
    return math.exp(min(nats_per_token, 50.0))


def active_units(post_means: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions whose posterior mean varies across data: Cov_x(E_q[z_u]) > 0.01 (Burda et al. 2016)."""
    if post_means.shape[0] < 2:
        return 0
    return int((post_means.float().var(dim=0) > threshold).sum())


def _batches(data, batch_size: int, max_batches: int):
    """All batches in a fixed order, or max_batches of them spread evenly over the split (the
    batches are grouped by length, so the first ones alone would be the shortest windows)."""
    batches = data.batches(batch_size, shuffle=False)
    if max_batches and max_batches < len(batches):
        step = len(batches) / max_batches
        batches = [batches[int(i * step)] for i in range(max_batches)]
    return batches


@torch.inference_mode()
def elbo_metrics(model, data, batch_size: int, max_batches: int = 0, seed: int = 0) -> dict:
    """The negative ELBO per token, its NLL and KL parts, and active units, on `data`.

    z is drawn from the posterior with its own seeded generator state, so a training run's RNG
    stream is untouched and repeated validations of one model agree. Sums stay on the device
    (one read at the end) and active units come from running moments, so memory does not grow
    with the split.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)              # NLL, KL, other KL
    moments = None                                                          # n, sum, sum of squares
    tokens = targets = 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for idx in _batches(data, batch_size, max_batches):
            b = data.batch(idx).to(device)
            out = model(b.tokens, b.lens, b.turns)
            sums[0] += out["nll"].sum().double()
            tokens += out["n_tokens"]
            targets += len(out["nll"])
            if "kl" in out:
                sums[1] += out["kl"].sum().double()
            if "kl_extra" in out:   # a KL outside the per-utterance latents (VHCR's z_conv): in the ELBO
                sums[2] += out["kl_extra"].double()
            if "post_mean" in out:
                moments = _add_moments(moments, out["post_mean"].double())
    model.train(was_training)
    nll, kl, kl_extra = sums.tolist()
    elbo = (nll + kl + kl_extra) / max(tokens, 1)
    return {"elbo_per_token": elbo, "ppl": perplexity(elbo), "nll_per_token": nll / max(tokens, 1),
            "ppl_nll": perplexity(nll / max(tokens, 1)), "kl_per_utt": kl / max(targets, 1),
            "active_units": active_units_from(moments), "tokens": tokens, "utterances": targets,
            **({"kl_extra_per_utt": kl_extra / max(targets, 1)} if kl_extra else {})}


def _add_moments(moments, x: torch.Tensor):
    """Running count, sum and sum of squares of the rows of x (T, Z)."""
    batch = (x.shape[0], x.sum(0), (x * x).sum(0))
    return batch if moments is None else tuple(a + b for a, b in zip(moments, batch))


def active_units_from(moments, threshold: float = 0.01) -> int:
    """active_units from running moments: the unbiased variance of each dimension's mean."""
    if moments is None or moments[0] < 2:
        return 0
    n, s, sq = moments
    var = (sq - s * s / n) / (n - 1)
    return int((var > threshold).sum())


@torch.inference_mode()
def iw_nll(model, data, k: int, batch_size: int, max_batches: int = 0, seed: int = 0) -> float:
    """Importance-weighted NLL per token: -sum_n log(1/K sum_k w_nk) / tokens (Burda et al. 2016)."""
    from tqdm import tqdm
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for idx in tqdm(_batches(data, batch_size, max_batches), desc=f"IW bound, K={k}", unit="batch"):
            b = data.batch(idx).to(device)
            w, n = model.log_weights(b.tokens, b.lens, b.turns, k)          # (T, K)
            total -= (torch.logsumexp(w, dim=1) - math.log(k)).sum().item()
            tokens += n
    return total / max(tokens, 1)
