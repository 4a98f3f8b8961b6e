"""A row with no model under DialogWAE's protocol: each context answered with the training split's
replies to the turns most like its last one.

    vhred nearest [--config configs/dailydialog-cpu.yaml] [key=value ...]   (= python -m vhred.nearest)

A training turn is a TF-IDF vector of its words (DialogWAE's tokens) plus, at --previous-weight,
those of the turn before it; a context is the same of its last two turns. The 10 training replies
of the most similar turns (cosine, repeats dropped) are its 10 responses; a dialogue's first
utterance gets the 10 commonest openings. Scored as `vhred eval --protocol dialogwae` scores a
model, unseen targets included (vhred/metrics/dialogwae.py), and written the same way:
results-dialogwae-<split>.json / .md and samples-dialogwae-<split>.jsonl in --out.

DailyDialog's training split holds many of its test exchanges; this row says what recalling them
is worth, so that a model's BLEU can be read against it (docs/evaluation.md); `vhred compare`
adds it to its table.
"""
import math
import os
import time
from collections import Counter

import torch

from . import config
from .cli import command, Parser, program
from .errors import InputError
from .evaluate import check_replaces_its_own, markdown, report_paths, write_report
from .metrics import dialogwae
from .sources import split_dialogues


class Index:
    """The training split's (turn before, turn, reply) triples as unit TF-IDF rows."""

    def __init__(self, dialogues: list[list[str]], previous_weight: float):
        self.previous_weight = previous_weight
        turns = [(d[i - 1] if i else "", d[i], d[i + 1]) for d in dialogues for i in range(len(d) - 1)]
        self.replies = [r for _, _, r in turns]
        df = Counter(w for _, turn, _ in turns for w in set(dialogwae.tokenize(turn)))
        self.idf = {w: math.log(len(turns) / n) for w, n in df.items()}
        self.column = {w: j for j, w in enumerate(self.idf)}
        rows = [self.vector(before, turn) for before, turn, _ in turns]
        at = [[i for i, row in enumerate(rows) for _ in row], [j for row in rows for j in row]]
        values = [x for row in rows for x in row.values()]
        self.matrix = torch.sparse_coo_tensor(at, values, (len(rows), len(self.column)),
                                              check_invariants=False).coalesce()   # (turns, words)
        self.openings = [u for u, _ in Counter(d[0] for d in dialogues if d).most_common()]

    def vector(self, before: str, turn: str) -> dict[int, float]:
        """{column: weight}, of unit length: the turn's words, the turn before's at previous_weight."""
        v = Counter()
        for text, weight in ((turn, 1.0), (before, self.previous_weight)):
            for w in dialogwae.tokenize(text) if weight else []:
                if w in self.column:
                    v[self.column[w]] += weight * self.idf[w]
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {j: x / norm for j, x in v.items()}

    def nearest(self, contexts: list[list[str]], k: int) -> list[list[str]]:
        """k distinct replies per context, the most similar turns' first."""
        pool = max(POOL, POOL // 10 * k)   # most turns' replies repeat: enough turns for k distinct ones
        out = []
        for s in range(0, len(contexts), 256):   # 256 queries at a time: (turns, 256) scores in memory
            chunk = contexts[s:s + 256]
            queries = torch.zeros(len(self.column), len(chunk))   # (vocabulary, chunk)
            for q, c in enumerate(chunk):
                for j, x in self.vector(c[-2] if len(c) > 1 else "", c[-1]).items():
                    queries[j, q] = x
            top = torch.sparse.mm(self.matrix, queries).topk(min(pool, len(self.replies)), dim=0).indices.T   # (chunk, pool)
            for c, rows in zip(chunk, top.tolist()):
                candidates = self.openings if not c[-1].strip() else [self.replies[i] for i in rows]
                out.append(distinct(candidates, k))
        return out


POOL = 200   # the most similar turns read for the default 10 replies
# The previous turn's weight against the last's 1: 0.5 by default; far above, the last turn no longer
# counts, and near 1e308 weight x idf overflows and every vector of a context with two turns reads as 0.
MAX_PREVIOUS_WEIGHT = 100.0


def distinct(replies: list[str], k: int) -> list[str]:
    """The first k replies that differ as they are scored (DialogWAE's tokens): "and then ?" and
    "And then ?" are one reply, as the training split writes some of its copies."""
    seen, out = set(), []
    for r in replies:
        key = tuple(dialogwae.tokenize(r))
        if key not in seen:
            seen.add(key)
            out.append(r)
            if len(out) == k:
                break
    return out


def parse_args(argv):
    p = Parser(prog=program("python -m vhred.nearest"), description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/dailydialog-cpu.yaml", help="its data settings (default %(default)s)")
    p.add_argument("--split", default="test", choices=["test", "validation"],
                   help="the split whose targets are scored (default %(default)s)")
    p.add_argument("--max-contexts", type=int, default=0, help="score the first N targets (default 0: all)")
    p.add_argument("--samples", type=int, default=dialogwae.SAMPLES, help="responses per context (default %(default)s)")
    p.add_argument("--previous-weight", type=float, default=0.5, help="weight of the turn before the last (default %(default)s)")
    p.add_argument("--out", default="runs/nearest-neighbour", help="report folder (default %(default)s)")
    p.add_argument("overrides", nargs="*", help="config key=value, e.g. data_dir=...")
    args = p.parse_args(argv)
    if args.samples < 1 or args.max_contexts < 0 or not 0 <= args.previous_weight <= MAX_PREVIOUS_WEIGHT:   # NaN fails
        raise InputError(f"--samples must be positive, --max-contexts not negative and --previous-weight between 0 "
                         f"and {MAX_PREVIOUS_WEIGHT:g}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):   # found before the minute of scoring
        raise InputError(f"--out {args.out} is a file; give a folder for the report")
    check_replaces_its_own(report_paths(args.out, "dialogwae", args.split, "", args.max_contexts)[0], None,
                           settings(args), "give another --out to keep both, or delete it to replace them")
    return args


def settings(args) -> dict:
    return {**vars(args), "tag": ""}


@command
def main(argv=None):
    args = parse_args(argv)
    cfg = config.load(args.config, args.overrides)
    t0 = time.time()
    train = split_dialogues(cfg, "train", trained=False)
    index = Index(train, args.previous_weight)
    pairs = dialogwae.targets(split_dialogues(cfg, args.split, trained=False))[:args.max_contexts or None]
    found = index.nearest([c for c, _ in pairs], args.samples)
    metrics, seen = dialogwae.report(train, pairs, [[(r, True) for r in replies] for replies in found])
    rows = [{"context": c, "reference": r, "samples": f, "seen_in_training": s} for (c, r), f, s in zip(pairs, found, seen)]
    results = {"model": "nearest-neighbour", "split": args.split, "protocol": "dialogwae", "metrics": metrics,
               "settings": settings(args), "seconds": time.time() - t0}
    os.makedirs(args.out, exist_ok=True)
    title = f"nearest neighbour (no model) on the {args.split} split, dialogwae protocol"
    paths = write_report(args.out, results, rows, title)
    print(markdown(results, title))
    print(f"wrote {', '.join(paths)}")


if __name__ == "__main__":
    main()
