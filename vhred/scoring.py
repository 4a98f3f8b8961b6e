"""Score candidate responses for a context (higher is better).

Three kinds:

  ll   log p(r | context) per predicted token (the words and <eos>). HRED's is exact; VHRED's is
       the importance-weighted bound of Burda et al. (2016) with K samples of z from the
       posterior q(z | context, r):  log 1/K sum_k p(r | z_k) p(z_k | context) / q(z_k | ...).
  pmi  pointwise mutual information, the MMI-antiLM score of Li et al. (2016) with lambda = 1:
       [log p(r | context) - log p(r | NEUTRAL)] per predicted token. The neutral context is
       one empty turn (the model reads only <eos>, and a retrieve run no reply): the model's guess of a first reply to a
       silent partner, i.e. how likely r is with nothing to respond to. Generic replies ("I
       don't know .") are likely everywhere and lose their advantage; replies that fit this
       context gain. Per token, so long replies are not favoured for their length alone.
  mmi  the MMI family of Li et al. (2016) that holds both: [log p(r | context) - lambda log p(r |
       NEUTRAL)] per predicted token + gamma * (|r| + 1). lambda = 0, gamma = 0 is ll; lambda = 1,
       gamma = 0 is pmi; gamma > 0 favours longer replies, gamma < 0 shorter ones (per-token
       scores leave length out). Chosen lambda and gamma: decoding.DecodeOptions, measured in
       docs/rating.md.

Each (context, response) pair draws its z samples from its own generator, seeded by the
seed and the pair's tokens, so a score does not depend on what else is in the batch.
"""
import math

import torch

from .dataset import collate, once_per_context
from .decoding import context_states, keyed_noise, row_seed

KINDS = ("pmi", "ll")   # the fixed scores the rank command compares
FAMILY = KINDS + ("mmi",)   # and the family with lambda and gamma
DEFAULT_KIND = "pmi"   # ranks the true response first 3x as often as ll (README, "Ranking")
NEUTRAL: list[list[int]] = [[]]   # one empty turn
IW_SAMPLES = 10        # K of the importance-weighted bound (VHRED): evaluation and ranking metrics
RANK_SAMPLES = 3       # K when ranking candidates (chat, generate, the API, serving): the true response
                       # first among 10 for 52% of 300 test contexts against 55% with K = 10, 5x faster
                       # (vhred rank --iw-samples 3|10, the CPU-config VHRED; README "Serving")
BATCH_PAIRS = 8        # pairs per forward pass (each runs K times: 80 rows); 64 pairs was 1.5-2.6x
                       # slower on a CPU (8 contexts x 10 candidates: 23-35 s against 13-15 s, reference sizes)


@torch.inference_mode()
def log_likelihoods(model, contexts: list[list[list[int]]], responses: list[list[int]],
                    k: int = IW_SAMPLES, seed: int = 0) -> tuple[list[float], list[int]]:
    """log p(response | context) in nats for each pair, and its predicted tokens (|r| + 1)."""
    model.eval()
    states = once_per_context(lambda c: context_states(model, c), contexts)   # (P, Hc)
    logp, tokens = [], []
    for start in range(0, len(responses), BATCH_PAIRS):
        end = start + BATCH_PAIRS
        lp, n = _log_likelihood_batch(model, states[start:end], contexts[start:end], responses[start:end], k, seed)
        logp += lp
        tokens += n
    return logp, tokens


def _log_likelihood_batch(model, ctx, contexts, responses, k: int, seed: int):
    """The bound for P pairs, ctx (P, Hc) their contexts' states."""
    device = ctx.device
    b = collate([[r] for r in responses]).to(device)                        # P one-turn dialogues
    lens = b.lens - 1                                                       # |r| + 1: words and <eos>
    seeds = [row_seed(seed, c, r, i) for c, r in zip(contexts, responses) for i in range(k)]
    eps, _ = keyed_noise(seeds, model.noise_dim, 0, device)                 # (P*K, noise)
    w = model.response_log_weights(ctx, b.tokens, lens, eps)                # (P, K'), K' = 1 when exact
    bound = torch.logsumexp(w, dim=1) - math.log(w.shape[1])                # (P,)
    return bound.tolist(), lens.tolist()


def score_ids(model, contexts: list[list[list[int]]], responses: list[list[int]], kind: str = DEFAULT_KIND,
              k: int = IW_SAMPLES, seed: int = 0, lam: float = 1.0, gamma: float = 0.0) -> list[float]:
    """Scores of kind `kind` for (context, response) pairs given as token ids, higher is better;
    lam and gamma are the mmi kind's lambda and gamma (pmi is lam 1, gamma 0; ll lam 0, gamma 0)."""
    if kind not in FAMILY:
        raise ValueError(f"score kind must be one of {', '.join(FAMILY)}, got '{kind}'")
    lam, gamma = {"ll": (0.0, 0.0), "pmi": (1.0, 0.0)}.get(kind, (lam, gamma))
    logp, tokens = log_likelihoods(model, contexts, responses, k, seed)
    if lam:
        base, _ = log_likelihoods(model, [NEUTRAL] * len(responses), responses, k, seed)
        logp = [a - lam * b for a, b in zip(logp, base)]
    return [lp / n + gamma * n for lp, n in zip(logp, tokens)]
