"""The training split's exchanges, searched by the turn they answer: the memory of retrieve-and-refine
(Weston, Dinan and Miller 2018), `retrieve=true`.

An exchange is a turn and the reply that followed it, as piece ids. A query turn is matched to the
exchanges' turns by TF-IDF cosine over piece ids,

    idf(w) = log(P / df(w)),   v(turn)_w = count(w in turn) * idf(w) / ||.||,   score = v(query) . v(turn_i)

and the reply of the best match is what the decoder reads beside the turn it answers (none for an
empty turn, or one that shares no piece with any exchange's). In training, no exchange whose reply
is the reply being learned is handed back, whichever turn it follows: DailyDialog holds dialogues
twice, differing in spacing or a name, and their copies would hand the model its own target. The
next best match is, so the model learns to use a neighbour's reply, not to copy the answer.
Ranking a split's true reply among others holds the true exchanges out the same way (hold_out).

The exchanges are buffers of the model: every checkpoint, resumed run and exported model folder
holds them, so a model answers the same wherever it is loaded. Their sizes depend on the data, so a
model built from its config alone holds none until it loads its weights (or fill() is called).
"""
from contextlib import contextmanager
from itertools import accumulate

import torch
from torch import nn

TOP_K = 8   # matches kept per query: training skips those whose reply it learns, often among them
CACHE_LIMIT = 1_000_000   # turns whose matches are kept (training's are about 100k)


class RetrievalIndex(nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.id_dtype = torch.int16 if vocab_size <= 2 ** 15 else torch.int32   # half the bytes in a checkpoint
        for name in ("turn_ids", "turn_ends", "reply_ids", "reply_ends"):   # flat ids and end offsets
            self.register_buffer(name, torch.zeros(0, dtype=self.id_dtype if name.endswith("ids") else torch.int32))
        self._reset()

    def _reset(self):
        """Forget what was derived from the buffers (the TF-IDF matrix, the matches found)."""
        self._pairs = self._matrix = self._idf = None
        self._found: dict[tuple, list[int]] = {}
        self._held: dict[tuple, set] = {}

    def fill(self, windows) -> int:
        """Index the unique (turn, reply) exchanges of dialogue windows (lists of utterances of
        piece ids), in the order they first occur; returns how many there are."""
        pairs = list(dict.fromkeys((tuple(w[i]), tuple(w[i + 1])) for w in windows for i in range(len(w) - 1)))
        for side, name in ((0, "turn"), (1, "reply")):
            seqs = [p[side] for p in pairs]
            setattr(self, f"{name}_ids", torch.tensor([t for s in seqs for t in s], dtype=self.id_dtype))
            setattr(self, f"{name}_ends", torch.tensor(list(accumulate(len(s) for s in seqs)), dtype=torch.int32))
        self._reset()
        return len(pairs)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """The buffers take the saved sizes (a fresh model's are empty), then the saved values."""
        for name, buf in self._buffers.items():
            saved = state_dict.get(prefix + name)
            if isinstance(saved, torch.Tensor) and buf is not None and saved.shape != buf.shape:
                self._buffers[name] = torch.zeros(saved.shape, dtype=buf.dtype, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._reset()

    def __len__(self) -> int:
        return len(self.turn_ends)

    def pairs(self) -> list[tuple[tuple, tuple]]:
        """The exchanges as (turn, reply) tuples of ids."""
        if self._pairs is None:
            turns = _unflatten(self.turn_ids, self.turn_ends)
            replies = _unflatten(self.reply_ids, self.reply_ends)
            self._pairs = list(zip(turns, replies))
        return self._pairs

    def _unit_vectors(self, ids: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """v(turn) of each turn of flat ids with end offsets: TF-IDF weights of its pieces, unit
        length, computed in float64: (sum lens,), (P,) -> sparse (P, V) float32."""
        P, V = len(ends), self.vocab_size
        ends = ends.long()
        row = torch.repeat_interleave(torch.arange(P), torch.diff(ends, prepend=ends.new_zeros(1)))
        col = ids.long()
        keep = (col >= 0) & (col < V)                                       # a corrupt id reads as absent
        tf = torch.sparse_coo_tensor(torch.stack([row[keep], col[keep]]), torch.ones(int(keep.sum()), dtype=torch.float64),
                                     (P, V), check_invariants=False).coalesce()   # counts of each piece in each turn
        (r, c), vals = tf.indices(), tf.values()
        if self._idf is None:   # the exchanges' own turns: df, then idf
            df = torch.bincount(c, minlength=V)                             # turns holding each piece
            self._idf = torch.where(df > 0, torch.log(P / df.clamp(min=1).double()), 0.0).float()
        vals = vals * self._idf.double()[c]
        norm = torch.zeros(P, dtype=torch.float64).index_add_(0, r, vals * vals).sqrt()
        vals = vals / torch.where(norm > 0, norm, 1.0)[r]
        return torch.sparse_coo_tensor(tf.indices(), vals.float(), (P, V), check_invariants=False).coalesce()

    def _search(self, turns: list[tuple]):
        """Find the TOP_K best exchanges of each turn not yet searched, in chunks of 512 queries."""
        if len(self._found) + len(set(turns)) > CACHE_LIMIT:   # a long-running server meets new turns forever
            self._found.clear()   # before the search: every turn of this call is found again
        todo = list(dict.fromkeys(t for t in turns if t not in self._found))
        if not todo:
            return
        if self._matrix is None:   # the exchanges' turn vectors, once per load
            self._matrix = self._unit_vectors(self.turn_ids, self.turn_ends)     # (P, V)
        for s in range(0, len(todo), 512):
            chunk = todo[s:s + 512]
            q = self._unit_vectors(torch.tensor([t for turn in chunk for t in turn], dtype=torch.long),
                                   torch.tensor(list(accumulate(len(t) for t in chunk))))   # (Q, V)
            scores = torch.sparse.mm(self._matrix, q.to_dense().T)              # (P, Q)
            top = scores.topk(min(TOP_K, len(self)), dim=0)                    # (k, Q)
            # a score of 0 shares no piece: the tie order of topk would pick an arbitrary exchange
            self._found.update((turn, [p for p, v in zip(ps, vs) if v > 0])
                               for turn, ps, vs in zip(chunk, top.indices.T.tolist(), top.values.T.tolist()))

    def replies(self, turns: list[list[int]], learned: list[list[int]] | None = None) -> list[list[int]]:
        """The reply of the best-matching exchange for each turn: ids, [] with an empty index or
        no match. learned (training): the reply each turn is followed by, which is never handed
        back (nor are the replies held out for the turn, see hold_out)."""
        if not len(self):
            return [[] for _ in turns]
        keys = [tuple(t) for t in turns]
        self._search(keys)
        pairs, out = self.pairs(), []
        for i, key in enumerate(keys):
            skip = {tuple(learned[i])} if learned is not None else self._held.get(key, ())
            pick = next((p for p in self._found[key] if pairs[p][1] not in skip), None)
            out.append([] if pick is None else list(pairs[pick][1]))
        return out

    @contextmanager
    def hold_out(self, exchanges):
        """Within it, each (turn, reply) of exchanges is as training's learned reply: never handed
        back for that turn. Ranking a split's true replies must not read them from the index."""
        self._held = {}
        for turn, reply in exchanges:
            self._held.setdefault(tuple(turn), set()).add(tuple(reply))
        try:
            yield
        finally:
            self._held = {}


def _unflatten(ids: torch.Tensor, ends: torch.Tensor) -> list[tuple]:
    flat, ends = ids.tolist(), ends.tolist()
    return [tuple(flat[a:b]) for a, b in zip([0] + ends[:-1], ends)]
