"""The replies shown for a context: drawn (pooled with other runs' when the model has a pool),
repeats dropped, faulty ones behind good ones, drawn again when too few are good, and ranked by
likelihood, PMI, the MMI family, or the run's reply critic, with the answer score after a
wh-question (the choices measured in docs/rating.md).
"""
import re
from dataclasses import replace

import torch

from . import critic, decoding, kept
from .decoding import DecodeOptions, Response
from .errors import InputError
from .lexicon import training_lexicon
from .limits import MAX_LEN
from .metrics.surface import clean
from .models.layers import Hierarchical as Model
from .render import encode_turns, history_read, pretty, response_text, uncut
from .scoring import NEUTRAL, RANK_SAMPLES, score_ids
from .sources import spaced

REFILLS = (4, 8)   # draws per reply shown that candidates() goes on to when fewer than N good ones came


@torch.inference_mode()
def generate(model: Model, contexts: list[list[list[int]]], opts: DecodeOptions, z=None) -> list[list[Response]]:
    """decoding.decode's opts.num_samples replies for each context, repeats dropped (opts.dedup)
    and ranked best first, each with its ranking score (opts.rank); with rank "none" in the order
    drawn, each with its decoding's score. (The `vhred generate` command is generate.py.)"""
    results = decoding.decode(model, contexts, opts, z)
    results = [_dedup(r) if opts.dedup else r for r in results]
    return _rank(model, contexts, results, opts) if opts.rank != "none" else results


def candidates(model: Model, contexts: list[list[list[int]]], opts: DecodeOptions,
               same=None, z=None, keep=None, last_turns: list[str] | None = None) -> list[list[Response]]:
    """What the chat shows for each context: when repeats are dropped or candidates ranked,
    D x N are drawn (D = opts.draws) and the first N kept (so N distinct ones usually remain,
    and ranked, they are the best N of D x N); otherwise the N decoded. same(ids) -> text, when
    given, also drops responses whose text repeats an earlier one's (other pieces can spell the
    same words). keep(ids) -> bool (shown_filter) puts faulty responses behind all good ones. A
    context with fewer than N good distinct ones is drawn again with 4N, then 8N (the same first
    draws and more) where D is smaller; only then are faulty ones shown, last, or fewer than N
    (shown_note says which). HRED's greedy and beam draws are all alike: 2N at most. Ranked, the
    N are shown in readers_order; last_turns: each context's last turn as written (its kind is
    read there; by default it is decoded from the ids, cut at max_utt_len)."""
    n = opts.check().num_samples
    if not (opts.dedup or opts.rank != "none" or keep):
        return drawn(model, contexts, opts, z)
    results, todo = [[] for _ in contexts], list(range(len(contexts)))
    for factor in draw_factors(model, opts, refills=bool(keep or (opts.dedup and same))):
        wide = replace(opts, num_samples=factor * n)
        found = drawn(model, [contexts[i] for i in todo], wide, None if z is None else z[todo])
        for i, row in zip(todo, found):
            row = _dedup(row, key=same) if opts.dedup and same else row
            if keep:   # good ones first, each part in its ranked order
                row = [r for r in row if keep(r[0])] + [r for r in row if not keep(r[0])]
            results[i] = row[:n]
        todo = [i for i in todo if len(results[i]) < n or (keep and not keep(results[i][-1][0]))]
        if not todo:
            break
    if not readers_order_applies(model, opts):
        return results
    if last_turns is None:
        last_turns = [model.sp.decode(c[-1]) if c else "" for c in contexts]
    return [readers_order(model.readers_table, model.sp, turn, row, keep) for turn, row in zip(last_turns, results)]


def readers_order_applies(model: Model, opts: DecodeOptions) -> bool:
    """Whether the ranked replies are shown in the readers' order: the run has the table
    (kept.json), opts.order is "readers", and they are ranked."""
    return getattr(model, "readers_table", None) is not None and opts.order == "readers" and opts.rank != "none"


def readers_order(table: dict, sp, last_turn: str, row: list[Response], keep=None) -> list[Response]:
    """One context's ranked replies in order of how often readers kept each, as shown, after this
    kind of last turn (vhred/kept.py: opts.order "readers", when the run has the table); faulty
    ones (keep) stay after every good one."""
    good = [r for r in row if not keep or keep(r[0])]
    texts = [pretty(sp.decode(r[0])) for r in good]
    return [good[i] for i in kept.order(table, last_turn, texts)] + row[len(good):]


def drawn(model: Model, contexts: list[list[list[int]]], opts: DecodeOptions, z=None) -> list[list[Response]]:
    """generate(), or, when the model's draws are pooled with other runs' (load_model's pool_with),
    opts.num_samples drawn in equal shares by it and each of them, the model's first, pooled and
    ranked by the sum of every run's own ranking score (its critic + 2 x MMI when it has a critic).
    Two models trained alike miss different turns and judge differently: rated blind, VHRED and
    CVAE so, each with its critic, +3.4 [+1.6, +5.2] points of the five shown and +1.7 [-2, +5.5]
    first against VHRED alone (docs/rating.md). A given z is the model's own: a context with one
    (a row of z not NaN) draws alone, the others as they would in a batch of their own; every
    run still judges its draws, since a reply's score reads only its text."""
    pool = model.pool
    if not pool:
        return generate(model, contexts, opts, z)
    given = [] if z is None else (~torch.isnan(z).any(dim=1)).tolist()
    if given and all(given):
        return _own_z(model, pool, contexts, opts, z)
    if any(given):   # a served batch may mix requests with a z and without
        alone = [i for i, g in enumerate(given) if g]
        rows = dict(zip(alone, _own_z(model, pool, [contexts[i] for i in alone], opts, z[alone])))
        rest = [i for i, g in enumerate(given) if not g]
        rows.update(zip(rest, drawn(model, [contexts[i] for i in rest], opts)))
        return [rows[i] for i in range(len(contexts))]
    share = replace(opts, num_samples=-(-opts.num_samples // (1 + len(pool))), rank="none", dedup=False)
    rows = [generate(model, contexts, share)] + [   # another run's z means nothing to this model: None
        [[Response(r[0], r[1]) for r in row] for row in generate(m, contexts, share)] for m in pool]
    results = [[r for per_model in row for r in per_model] for row in zip(*rows)]   # (C, models x share)
    results = [_dedup(r) if opts.dedup else r for r in results]
    return _rank(model, contexts, results, opts, judges=pool) if opts.rank != "none" else results


def _own_z(model, pool, contexts, opts: DecodeOptions, z) -> list[list[Response]]:
    """The model's draws from the z given, ranked by the whole pool as its pooled draws are."""
    rows = generate(model, contexts, replace(opts, rank="none"), z)
    return _rank(model, contexts, rows, opts, judges=pool) if opts.rank != "none" else rows


def draw_factors(model, opts: DecodeOptions, refills: bool = True) -> tuple[int, ...]:
    """Draws per reply shown in each round candidates() may decode, every round drawn anew (its
    first draws the same): D, then 4 and 8 where D is smaller and refills are wanted (faulty or
    repeated replies dropped). HRED's greedy and beam draws are all alike: one round of 2 at most."""
    if not (model.latent or opts.method == "sample"):
        return (min(opts.draws, 2),)
    return (opts.draws, *(f for f in REFILLS if f > opts.draws and refills))


def draws_made(model, opts: DecodeOptions) -> int:
    """Draws per reply shown that candidates() has made when it shows a faulty reply: it goes on
    to 8 where draws differ; HRED's greedy and beam draws are all alike, 2 at most."""
    return max(draw_factors(model, opts))


def shown_note(shown: list, n: int, keep=None, draws: int = REFILLS[-1]) -> str:
    """A line saying why fewer than n are shown or some of them are faulty; "" when neither."""
    return count_note(len(shown), n, sum(not keep(r[0]) for r in shown) if keep else 0, draws)


def count_note(shown: int, n: int, faulty: int, draws: int = REFILLS[-1]) -> str:
    """shown_note from the counts: `shown` replies of n asked for, the last `faulty` of them
    faulty, after `draws` draws per reply (draws_made)."""
    why = [f"{shown} of {n} shown: the other draws repeated these"] if shown < n else []
    if faulty:
        why.append(f"the last {faulty} shown have faulty text (non-words, glued or repeated): "
                   f"no more good ones in {draws * n} draws")
    return "; ".join(why)


def shown_filter(sp, cfg, opts: DecodeOptions):
    """keep(ids) for candidates(): True for a response worth showing, one without a surface fault
    (vhred/metrics/surface.py: a non-word of the training text, glued or repeated text, nothing);
    None when opts.clean is off. Without the training text here, words are not checked."""
    if not opts.clean:
        return None
    known = training_lexicon(cfg)
    return lambda ids: clean(response_text(sp, ids, opts.max_len, mark_cut=False), known)


def reply_key(text: str) -> str:
    """The words a reader sees, case and punctuation aside, so that "Single, please." and
    "Single please." count as one reply (one without words: its text)."""
    return " ".join(re.findall(r"[\w']+", text.lower())) or text


def same_reply(sp):
    """same(ids) for candidates(): the reply_key of the text a reader sees."""
    return lambda ids: reply_key(pretty(sp.decode(ids)))


def _dedup(responses, key=tuple):
    """Drop repeated responses of one context (the same key(ids)), keeping the first of each."""
    seen, kept = set(), []
    for r in responses:
        if key(r[0]) not in seen:
            seen.add(key(r[0]))
            kept.append(r)
    return kept


def _rank(model, contexts, results, opts: DecodeOptions, judges=()):
    """Score every candidate of every context in one batch, then order each context's best first.
    judges: more models (a pool's runs) whose own ranking scores are added to the model's."""
    pairs = [(c, ids) for c, r in zip(contexts, results) for ids, _ in r]
    scores = iter(ranking_scores(model, [c for c, _ in pairs], [r for _, r in pairs], opts, judges))
    return [sorted([Response(x[0], next(scores), x.z) for x in r], key=lambda x: -x[1]) for r in results]


def ranking_scores(model, contexts, replies, opts: DecodeOptions, judges=()) -> list[float]:
    """The score candidates are ranked by, of each (context, reply) pair: the model's own (_scores)
    plus that of each judge (a pool's other runs)."""
    return [sum(s) for s in zip(*(_scores(m, contexts, replies, opts) for m in (model, *judges)))]


def _scores(model, contexts, replies, opts: DecodeOptions) -> list[float]:
    """The model's own ranking score (opts.rank as it resolves for this model) of each pair."""
    kind = _own_ranking(model, opts)
    if kind == "critic":
        scores = critic_scores(model, contexts, replies, opts)
    else:
        scores = score_ids(model, contexts, replies, kind, RANK_SAMPLES, opts.seed, opts.mmi_lambda, opts.length_bonus)
    return plus_answers(model, contexts, replies, kind, opts, scores)


def plus_answers(model, contexts, replies, kind: str, opts: DecodeOptions, scores: list[float]) -> list[float]:
    """Rankings "critic" and "mmi" with opts.answer_weight x the answer score after a wh-question
    added, when the run has an answer table (vhred/answers.py); other scores as they are."""
    table = model.answers
    if kind not in ("critic", "mmi") or table is None or not opts.answer_weight:
        return scores
    return [s + opts.answer_weight * a for s, a in zip(scores, table.scores(contexts, replies))]


def ranking(model: Model, opts: DecodeOptions) -> str:
    """The score candidates are ordered by: opts.rank, "auto" being the model's reply critic when
    its folder holds one (loading.load_model attaches it), else "mmi". Asking for "critic" of
    a model without one, or with a pooled run without one, is refused, before any decoding."""
    if opts.rank == "critic" and any(m.reply_critic is None for m in model.pool):
        raise InputError("a run of --pool-with has no reply critic (its own scores join the ranking): train one "
                         "with `vhred critic --checkpoint RUN --ratings DIR ...`, or rank by mmi")
    return _own_ranking(model, opts)


def _own_ranking(model: Model, opts: DecodeOptions) -> str:
    """ranking() for the model's own scores, its pool aside."""
    has_critic = model.reply_critic is not None
    if opts.rank == "auto":
        return "critic" if has_critic else "mmi"
    if opts.rank == "critic" and not has_critic:
        raise InputError("this model has no reply critic (critic.safetensors in its folder): train one with "
                         "`vhred critic --checkpoint RUN --ratings DIR ...`, or rank by mmi")
    return opts.rank


def critic_scores(model: Model, contexts, replies, opts: DecodeOptions) -> list[float]:
    """Rank "critic": the reply critic's logit (vhred/critic.py) of each reply as a reader sees it
    + critic.MMI_WEIGHT x the MMI score (opts' lambda and gamma) of each (context, reply) pair."""
    _own_ranking(model, DecodeOptions(rank="critic"))
    judged = critic.scores(model.reply_critic, contexts, shown_ids(model, replies))   # as it learned them: as read
    mmi = score_ids(model, contexts, replies, "mmi", RANK_SAMPLES, opts.seed, opts.mmi_lambda, opts.length_bonus)
    return [c + critic.MMI_WEIGHT * m for c, m in zip(judged, mmi)]


MEMO_REPLIES = 50_000   # rendered replies kept per model for the critic: a few MB


def shown_ids(model: Model, replies: list[list[int]]) -> list[list[int]]:
    """Each reply's ids as the reply critic reads them: critic.reply_ids of the text shown. Kept
    per model, since the same short replies come back turn after turn (rendering costs about as
    much as the critic's reading)."""
    memo = model.__dict__.setdefault("shown_memo", {})
    if len(memo) > MEMO_REPLIES:
        memo.clear()
    out = []
    for r in replies:
        key = tuple(r)
        if key not in memo:
            memo[key] = critic.reply_ids(model.sp, pretty(model.sp.decode(r)))
        out.append(memo[key])
    return out


def score(model, sp, cfg, history: list[str], replies: list[str], rank: str | None = None) -> list[float]:
    """Score candidate replies to a conversation (its turns as text, oldest first), higher is
    better; by default on the scale candidates are ranked by (DecodeOptions: rank, mmi_lambda,
    length_bonus; K = RANK_SAMPLES z samples, seed 0; the run's reply critic under rank "auto"
    when it has one; the answer score after a wh-question when it has an answer table; with a
    pool, the sum of every run's). Text is written as the corpus writes it first (sources.spaced), the
    model's own turns and the candidates without a cut mark (render.history_read)."""
    opts = DecodeOptions(rank=rank or DecodeOptions.rank)
    ranking(model, opts)   # a ranking this model (or a run of its pool) cannot do is refused
    context = encode_turns(sp, history_read(history), cfg.max_utt_len, cfg.max_context) or NEUTRAL
    responses = [sp.encode(spaced(uncut(c)))[:MAX_LEN] for c in replies]   # whole, as respond() scores its replies
    if not responses:
        return []
    return ranking_scores(model, [context] * len(responses), responses, opts, model.pool)
