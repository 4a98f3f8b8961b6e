"""Response ranking (the command is `vhred rank`, or `python -m eval.rank`): for each test context, the true
response among `distractors` responses drawn from other dialogues of the split with a fixed
seed; every score kind of vhred/scoring.py ranks the candidates; recall@1, recall@2 and mean
reciprocal rank of the true response (chance with 9 distractors: R@1 0.1, R@2 0.2, MRR 0.29).

The true response's rank is 1 + the number of distractors scoring at least as high: a tie counts
against the model, so one that scores every candidate alike ranks at chance or below, not first.
"""
import math
import random
from collections import Counter
from contextlib import nullcontext

from ..errors import InputError


def candidate_sets(pairs: list[tuple[list[str], str, int]], distractors: int, seed: int) -> list[list[str]]:
    """For each (context, response, dialogue index): [true response, distractors...], the
    distractors drawn without replacement from responses of other dialogues."""
    rng = random.Random(seed)
    pool = [(r, d) for _, r, d in pairs]
    dialogues_of = {}                                                       # reply -> the dialogues it is in
    for r, d in pool:
        dialogues_of.setdefault(r, set()).add(d)
    only_in = Counter(next(iter(ds)) for ds in dialogues_of.values() if len(ds) == 1)   # dialogue -> its own replies
    sets = []
    for _, true, dlg in pairs:
        others = len(dialogues_of) - only_in[dlg] - (len(dialogues_of[true] - {dlg}) > 0)   # replies it may draw
        if others < distractors:   # else the draw below never ends
            raise InputError(f"the split holds fewer than {distractors} other dialogues' replies to draw as "
                             "distractors; give a smaller --distractors or more dialogues")
        picked = []
        while len(picked) < distractors:
            r, d = pool[rng.randrange(len(pool))]
            if d != dlg and r != true and r not in picked:
                picked.append(r)
        sets.append([true, *picked])
    return sets


def rank_of_first(scores: list[float]) -> int:
    """1 + the distractors (scores[1:]) scoring at least as high as the true response (scores[0])."""
    if not all(math.isfinite(s) for s in scores):   # NaN compares false with anything: it would rank first
        raise InputError("a ranking score is not finite (NaN or infinite): the checkpoint is from a run that "
                         "diverged; train it again with a lower lr=")
    return 1 + sum(s >= scores[0] for s in scores[1:])


def ranking_metrics(ranks: list[int]) -> dict:
    n = len(ranks)
    return {"recall@1": sum(r == 1 for r in ranks) / n, "recall@2": sum(r <= 2 for r in ranks) / n,
            "mrr": sum(1 / r for r in ranks) / n}


def rank_scores(model, contexts_ids, candidates_ids, kinds, k: int, seed: int, progress=None) -> dict:
    """Ranks of the true (first) candidate of each context under each score kind.

    log p(r | context) is computed once per pair and log p(r | neutral) once per distinct
    response, then every kind is derived from them (see vhred/scoring.py)."""
    from ..scoring import NEUTRAL, log_likelihoods
    flat_ctx = [c for c, cands in zip(contexts_ids, candidates_ids) for _ in cands]
    flat = [r for cands in candidates_ids for r in cands]
    index = getattr(model, "retrieval", None)   # retrieve=true: the split's true replies are not read back
    truths = ((c[-1], cands[0]) for c, cands in zip(contexts_ids, candidates_ids) if c)   # (last turn, true reply)
    with index.hold_out(truths) if index else nullcontext():
        logp, tokens = _chunked(log_likelihoods, model, flat_ctx, flat, k, seed, progress)
    unique = sorted({tuple(r) for r in flat})
    base, _ = _chunked(log_likelihoods, model, [NEUTRAL] * len(unique), [list(r) for r in unique], k, seed, progress)
    base = dict(zip(unique, base))
    per_kind = {"ll": [lp / n for lp, n in zip(logp, tokens)],
                "pmi": [(lp - base[tuple(r)]) / n for lp, r, n in zip(logp, flat, tokens)]}
    out, width = {}, len(candidates_ids[0])
    for kind in kinds:
        s = per_kind[kind]
        ranks = [rank_of_first(s[i:i + width]) for i in range(0, len(s), width)]
        out[kind] = ranking_metrics(ranks)
    return out


def _chunked(fn, model, contexts, responses, k, seed, progress, chunk: int = 640):
    """fn over chunks of pairs, with a progress callback (pairs done, pairs in all)."""
    a, b = [], []
    for start in range(0, len(responses), chunk):
        x, y = fn(model, contexts[start:start + chunk], responses[start:start + chunk], k, seed)
        a, b = a + x, b + y
        if progress:
            progress(len(a), len(responses))
    return a, b
