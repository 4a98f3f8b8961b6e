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
def elbo_metrics(model, data, batch_size: int, max_batches: int = 0, seed: int = 0,
                 shard: tuple[int, int] = (0, 1), reduce=None) -> dict:
    """The negative ELBO per token, its NLL and KL parts, and active units, on `data`.

    z is drawn from the posterior with its own seeded generator state, so a training run's RNG
    stream is untouched and repeated validations of one model agree. Sums stay on the device
    (one read at the end) and active units come from running moments, so memory does not grow
    with the split.

    Data-parallel ranks each pass shard=(rank, world) and take every world-th batch; `reduce`
    sums their statistics in place (an all-reduce), so every rank gets the whole split's figures.
    """
    device = next(model.parameters()).device
    rank, world = shard
    z_dim = model.z_dim   # 0 for a family without a latent
    # NLL, KL, other KL, tokens, targets, then the posterior means' count, sums and sums of squares
    sums = torch.zeros(6 + 2 * z_dim, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed + rank)   # rank 0 of one process: the seed itself, as before
        for idx in _batches(data, batch_size, max_batches)[rank::world]:
            b = data.batch(idx).to(device, non_blocking=True)
            _add_batch(sums, model(b.tokens, b.lens, b.turns), z_dim)
    model.train(was_training)
    if reduce is not None:
        reduce(sums)
    return _elbo_figures(sums, z_dim)


def _add_batch(sums: torch.Tensor, out: dict, z_dim: int):
    """Add one batch's NLL, KL, counts and posterior-mean moments to the running sums (on the device)."""
    sums[0] += out["nll"].sum().double()
    sums[3] += out["n_tokens"]
    sums[4] += len(out["nll"])
    if "kl" in out:
        sums[1] += out["kl"].sum().double()
    if "kl_extra" in out:   # a KL outside the per-utterance latents (VHCR's z_conv): in the ELBO
        sums[2] += out["kl_extra"].double()
    if "post_mean" in out:
        mean = out["post_mean"].double()                                    # (T, Z)
        sums[5] += mean.shape[0]
        sums[6:6 + z_dim] += mean.sum(0)
        sums[6 + z_dim:] += (mean * mean).sum(0)


def _elbo_figures(sums: torch.Tensor, z_dim: int) -> dict:
    """The figures of elbo_metrics from its sums (one device-to-host read)."""
    nll, kl, kl_extra, tokens, targets, n = sums[:6].tolist()
    tokens, targets = int(tokens), int(targets)
    moments = (n, sums[6:6 + z_dim].cpu(), sums[6 + z_dim:].cpu()) if z_dim else None
    elbo = (nll + kl + kl_extra) / max(tokens, 1)
    return {"elbo_per_token": elbo, "ppl": perplexity(elbo), "nll_per_token": nll / max(tokens, 1),
            "ppl_nll": perplexity(nll / max(tokens, 1)), "kl_per_utt": kl / max(targets, 1),
            "active_units": active_units_from(moments), "tokens": tokens, "utterances": targets,
            **({"kl_extra_per_utt": kl_extra / max(targets, 1)} if kl_extra else {})}


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
