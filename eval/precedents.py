"""Precedents: what readers said of the same reply to turns like this one (docs/rating-rounds.md,
"Precedents: the readers' own labels in the ranking"). An experiment, not shipped.

The reply critic (vhred/critic.py) generalises from readers' labels; this is their labels as
they are. Every rated (context, reply, share of readers who kept it) of some rounds is kept, and
a candidate reply is scored by the labels the very same reply (the same pieces) got after the
most similar last turns:

    p(kept | r, c) = (sum_i w_i kept_i + M * p0) / (sum_i w_i + M),   w_i = cos(c, c_i)^2

over the TOP most similar of the rated contexts c_i whose reply was r, cos the TF-IDF cosine of
the last turns' pieces, p0 the share kept over all rated replies and M = 2 pseudo-labels that
pull a reply with few precedents towards it; a reply never rated gets p0.
`python -m eval.candidate_ceiling replay --precedents W,...` adds W x logit p to the critic's
ranking, with the precedents of the rounds the critic was trained on.

Why: most shown replies are short and recur ("OK.", "Of course.", "Yes."), and whether one
fits depends on the turn it answers: readers kept 57% of bare acknowledgements after a
statement and 17% after a wh-question. Replayed on rated draws no critic or precedent had seen,
weight 2 (chosen on other rated draws) put a good reply first in 5-9 more contexts of 100; rated
blind on 80 new contexts it made no difference (1.6 points more of the five shown, 2.5 fewer
good first replies), so the chat's ranking does not use it.
"""
import collections
import math

TOP = 20         # the most similar rated contexts a reply's estimate reads
M = 2.0          # pseudo-labels at the overall share kept


class Precedents:
    """Rated replies indexed by their pieces: data is [(context turns as ids, [(reply ids, kept)])],
    as vhred.critic_train.encoded(rounds, sp, cfg, ordered_only=False) gives them."""

    def __init__(self, data):
        turns = [collections.Counter(ctx[-1]) for ctx, _ in data]
        df = collections.Counter(piece for t in turns for piece in t)
        self.idf = {piece: math.log((len(turns) + 1) / (n + 1)) + 1 for piece, n in df.items()}
        self.n_turns = len(turns)
        self.vectors = [self.vector(t) for t in turns]
        self.by_reply = collections.defaultdict(list)                       # reply ids -> [(turn index, kept)]
        for turn, (_, rows) in enumerate(data):
            for ids, kept in rows:
                self.by_reply[tuple(ids)].append((turn, kept))
        shares = [kept for _, rows in data for _, kept in rows]
        self.p0 = sum(shares) / len(shares) if shares else 0.5

    def vector(self, pieces: collections.Counter) -> dict:
        """TF-IDF of a turn's pieces, unit length; a piece no rated turn holds weighs as the rarest."""
        rare = math.log(self.n_turns + 1) + 1
        v = {p: n * self.idf.get(p, rare) for p, n in pieces.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {p: x / norm for p, x in v.items()}

    def kept(self, last_turn: list[int], reply: list[int], q: dict | None = None) -> float:
        """p(kept | reply, last turn) as the docstring above; q, the last turn's vector, if known."""
        rated = self.by_reply.get(tuple(reply))
        if not rated:
            return self.p0
        q = q or self.vector(collections.Counter(last_turn))
        sims = sorted(((sum(q.get(p, 0.0) * x for p, x in self.vectors[t].items()), k) for t, k in rated),
                      reverse=True)[:TOP]
        w = [max(s, 0.0) ** 2 for s, _ in sims]
        return (sum(wi * k for wi, (_, k) in zip(w, sims)) + M * self.p0) / (sum(w) + M)

    def logits(self, contexts: list[list[list[int]]], replies: list[list[int]]) -> list[float]:
        """logit p(kept) for each (context turns, reply) pair, clipped to [-6.9, 6.9]."""
        out, queries = [], {}   # a context's candidates share its last turn: its vector is made once
        for ctx, reply in zip(contexts, replies):
            last = tuple(ctx[-1]) if ctx else ()
            if last not in queries:
                queries[last] = self.vector(collections.Counter(last))
            p = min(max(self.kept(last, reply, queries[last]), 1e-3), 1 - 1e-3)
            out.append(math.log(p / (1 - p)))
        return out
