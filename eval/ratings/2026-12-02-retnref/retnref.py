"""The sixty-ninth round's experiment: retrieve-and-refine VHRED (Weston et al. 2018) on the CPU config, by patching the
package in this process only.

The decoder attends over the first N pieces of the turn it answers (attention=N) AND the first N
pieces of a retrieved reply: the training split's reply to the turn most like the answered one
(TF-IDF over SentencePiece ids, unique (turn, reply) pairs of the training windows). In training
the answered turn's own exchange (the same turn followed by the same reply) is never retrieved.

    python eval/ratings/2026-12-02-retnref/retnref.py train --config configs/dailydialog-cpu.yaml name=dailydialog-cpu-retnref attention=20 epochs=8
    python eval/ratings/2026-12-02-retnref/retnref.py generate --checkpoint runs/dailydialog-cpu-retnref --input C --output O
"""
import json
import math
import os
import sys
import time
from collections import Counter

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))   # the repository root
from vhred import config, dataset, models  # noqa: E402
from vhred.models.layers import first_words, positions, to_device  # noqa: E402
from vhred.models.vhred import VHRED  # noqa: E402
from vhred.tokenizer import BOS, EOS, PAD  # noqa: E402


class Retriever:
    def __init__(self, windows, vocab_size: int, k: int = 3):
        pairs = dict.fromkeys((tuple(w[i]), tuple(w[i + 1])) for w in windows for i in range(len(w) - 1))
        self.pairs, self.k, self.V = list(pairs), k, vocab_size
        df = Counter(t for turn, _ in self.pairs for t in set(turn))
        P = len(self.pairs)
        self.idf = torch.zeros(vocab_size)
        for t, n in df.items():
            self.idf[t] = math.log(P / n)
        rows, cols, vals = [], [], []
        for i, (turn, _) in enumerate(self.pairs):
            v = self.vector(turn)
            rows += [i] * len(v)
            cols += list(v)
            vals += list(v.values())
        self.matrix = torch.sparse_coo_tensor([rows, cols], vals, (P, vocab_size)).coalesce()
        self.cache = {}

    def vector(self, turn) -> dict:
        tf = Counter(turn)
        v = {t: c * float(self.idf[t]) for t, c in tf.items() if 0 <= t < self.V}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {t: x / norm for t, x in v.items()}

    def fill(self, turns, log=None):
        todo = list(dict.fromkeys(tuple(t) for t in turns if tuple(t) not in self.cache))
        t0 = time.time()
        for s in range(0, len(todo), 512):
            chunk = todo[s:s + 512]
            q = torch.zeros(self.V, len(chunk))
            for j, turn in enumerate(chunk):
                for t, x in self.vector(turn).items():
                    q[t, j] = x
            top = torch.sparse.mm(self.matrix, q).topk(self.k, dim=0).indices.T.tolist()   # (chunk, k)
            for turn, idx in zip(chunk, top):
                self.cache[turn] = idx
            if log and s // 512 % 20 == 0:
                log(f"retrieval {s + len(chunk)}/{len(todo)} in {time.time() - t0:.0f}s")

    def replies(self, turns, golds=None):
        self.fill(turns)
        out = []
        for i, turn in enumerate(turns):
            own = (tuple(turn), tuple(golds[i])) if golds is not None else None
            pick = next((p for p in self.cache[tuple(turn)] if self.pairs[p] != own), self.cache[tuple(turn)][0])
            out.append(list(self.pairs[pick][1]))
        return out


class RetVHRED(VHRED):
    retriever: Retriever = None

    def split(self, cond):
        Hc, N, Hd = self.cfg.ctx_hidden, 2 * self.cfg.attention, self.cfg.dec_hidden
        end = Hc + N * Hd + N
        vec = torch.cat([cond[:, :Hc], cond[:, end:]], dim=-1)
        return vec, cond[:, Hc:Hc + N * Hd].unflatten(1, (N, Hd)), cond[:, Hc + N * Hd:end] > 0.5

    def memory2(self, words, rows, retrieved, tokens):
        """[answered turn's first N word states ; the retrieved reply's first N], projected, with masks."""
        N, device = self.cfg.attention, tokens.device
        s1, m1 = first_words(words, rows, N)                                # (R, N, 2Hu)
        width = max(len(r) for r in retrieved) + 2
        rt = torch.tensor([[BOS, *r, EOS] + [PAD] * (width - len(r) - 2) for r in retrieved], dtype=torch.long)
        rl = torch.tensor([len(r) + 2 for r in retrieved], dtype=torch.long)
        _, wr = self.encode_words(to_device(rt, device)[:, 1:], rl - 1)
        s2, m2 = first_words(wr, torch.arange(len(retrieved)), N)           # (R, N, 2Hu)
        mem = self.mem_proj(self.drop(torch.cat([s1, s2], 1)))              # (R, 2N, Hd)
        mask = torch.cat([m1, m2], 1)
        return torch.cat([mem.flatten(1), mask.to(mem.dtype)], dim=-1)

    @staticmethod
    def _ids(tokens, lens, rows):
        host = tokens[rows.to(tokens.device)].cpu()
        return [host[i, 1:int(lens[r]) - 1].tolist() for i, r in enumerate(rows.tolist())]

    def targets(self, tokens, lens, turns):
        lens, turns = lens.cpu(), turns.cpu()
        enc, words = self.encode_words(tokens[:, 1:], lens - 1)
        dlg, pos = positions(turns)
        tgt = (pos > 0).nonzero().squeeze(1)
        ctx = self.encode_context(self.context_inputs(enc, turns), turns, dlg[tgt], pos[tgt] - 1)
        ret = self.retriever.replies(self._ids(tokens, lens, tgt - 1), self._ids(tokens, lens, tgt))
        ctx = torch.cat([ctx, self.memory2(words, tgt - 1, ret, tokens)], dim=-1)
        tgt_dev = to_device(tgt, tokens.device)
        return enc[tgt_dev], ctx, tokens[tgt_dev], lens[tgt] - 1

    def final_states(self, tokens, lens, turns):
        h, words, last = self.last_turns(tokens, lens, turns)
        ret = self.retriever.replies(self._ids(tokens, lens.cpu(), last))
        return torch.cat([h, self.memory2(words, last, ret, tokens)], dim=-1)


def install(cfg_path="configs/dailydialog-cpu.yaml", overrides=()):
    cfg = config.load(cfg_path, list(overrides))
    folder = dataset.prepare(cfg, log=lambda *_: None)
    windows = dataset.DialogueData(folder, "train").ds["ids"]
    vocab = json.load(open(os.path.join(folder, "meta.json")))["vocab_size"]
    t0 = time.time()
    r = Retriever(windows, vocab)
    print(f"retriever: {len(r.pairs)} pairs in {time.time() - t0:.0f}s", flush=True)
    turns = [u for w in windows for u in w]
    turns += [u for w in dataset.DialogueData(folder, "validation").ds["ids"] for u in w]
    r.fill(turns, log=lambda m: print(m, flush=True))
    RetVHRED.retriever = r
    models.FAMILIES["vhred"] = RetVHRED


def main(what, argv, install_fn=install):
    """train, generate or evaluate with the package patched by install_fn (copynet.py reuses it)."""
    if what == "train":
        cfg_path = argv[argv.index("--config") + 1]
        install_fn(cfg_path, [a for a in argv if "=" in a and a.split("=")[0] in ("data_dir",)])
        from vhred import train
        train.main(argv)
    else:
        install_fn()
        from vhred import evaluate, generate
        {"generate": generate.main, "evaluate": evaluate.main}[what](argv)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
