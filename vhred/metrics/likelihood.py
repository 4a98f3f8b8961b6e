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
    batches = data.batches(batch_size, shuffle=False)
    return batches[:max_batches] if max_batches else batches


@torch.inference_mode()
def elbo_metrics(model, data, batch_size: int, max_batches: int = 0, seed: int = 0) -> dict:
    """The negative ELBO per token, its NLL and KL parts, and active units, on `data`.

    z is drawn from the posterior with its own seeded generator state, so a training run's RNG
    stream is untouched and repeated validations of one model agree.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll = kl = 0.0
    tokens = targets = 0
    means = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for idx in _batches(data, batch_size, max_batches):
            b = data.batch(idx).to(device)
            out = model(b.tokens, b.lens, b.turns)
            nll += out["nll"].sum().item()
            tokens += out["n_tokens"]
            targets += len(out["nll"])
            if "kl" in out:
                kl += out["kl"].sum().item()
                means.append(out["post_mean"].float().cpu())
    model.train(was_training)
    elbo = (nll + kl) / max(tokens, 1)
    return {"elbo_per_token": elbo, "ppl": perplexity(elbo), "nll_per_token": nll / max(tokens, 1),
            "ppl_nll": perplexity(nll / max(tokens, 1)), "kl_per_utt": kl / max(targets, 1),
            "active_units": active_units(torch.cat(means)) if means else 0,
            "tokens": tokens, "utterances": targets}


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
