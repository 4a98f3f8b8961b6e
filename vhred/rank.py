"""Response ranking of a checkpoint: the true response among 9 from other test dialogues.

    python -m vhred.rank --checkpoint runs/x/best.pt [--split test] [--max-contexts N]

For every context of the split (each utterance with a turn before it, up to max_context turns),
the candidates are the true response and 9 responses of other dialogues (seeded); each score of
vhred/scoring.py ranks them. Prints recall@1, recall@2 and MRR per score as JSON and writes
rank-<split>[-<tag>].json into the run folder (--max-contexts N tags it first<N>). The metric
itself is vhred.metrics.ranking; `python -m eval.rank` and `vhred rank` are this command.
"""
import json
import os
import sys
import time

from . import checkpoint, limits, loading
from .cli import command, Parser, program
from .config import MAX_INT
from .device import pick_device
from .evaluate import check_replaces_its_own, check_tag, report_name
from .files import check_output, json_safe, output_file
from .loading import chosen_checkpoint
from .render import encode_turns
from .metrics.ranking import candidate_sets, rank_scores
from .scoring import IW_SAMPLES, KINDS
from .sources import split_dialogues


def parse_args(argv):
    p = Parser(prog=program("python -m vhred.rank"),
               description="Rank the true response among random ones.")
    p.add_argument("--checkpoint", help="a run folder, .pt file or exported model folder (default: the newest runs/*/best.pt)")
    p.add_argument("--split", default="test", choices=["validation", "test"],
                   help="the split whose contexts are ranked (default %(default)s)")
    p.add_argument("--max-contexts", type=int, default=0, help="only the first N contexts, 0 for all (default %(default)s)")
    p.add_argument("--tag", default="", help="suffix of the result file's name (default: none, or first<N> with "
                                             "--max-contexts N: a quick check never replaces a split's figures)")
    p.add_argument("--distractors", type=int, default=9, help="random responses beside the true one (default %(default)s)")
    p.add_argument("--iw-samples", type=int, default=IW_SAMPLES, help="K of VHRED's likelihood bound (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the distractors and of z (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default %(default)s)")
    args = p.parse_args(argv)
    limits.count("--max-contexts", args.max_contexts, 0, MAX_INT)
    limits.count("--distractors", args.distractors, 1, 99)
    limits.count("--iw-samples", args.iw_samples, 1, limits.MAX_IW_SAMPLES)
    limits.count("--seed", args.seed, 0, 2 ** 63 - 1)
    check_tag(args.tag)
    return args


def context_triples(dialogues, max_context: int):
    """(context, true response, dialogue index) for every utterance with a turn before it."""
    return [(d[max(0, n - max_context):n], d[n], i) for i, d in enumerate(dialogues) for n in range(1, len(d))]


def progress(done: int, total: int):
    print(f"\rscoring {done}/{total} pairs", end="", file=sys.stderr, flush=True)


@command
def main(argv=None):
    args = parse_args(argv)
    path = checkpoint.resolve(chosen_checkpoint(args.checkpoint))
    out = os.path.join(checkpoint.results_folder(path), f"{report_name('rank', args.split, args.tag, args.max_contexts)}.json")
    check_output(out)   # a folder one may not write in: found now, not after the scoring
    check_replaces_its_own(out, path, vars(args), "give --tag NAME to keep both, or delete it to replace them")
    model, cfg, sp = loading.load_model(path, pick_device(args.device))
    triples = context_triples(split_dialogues(cfg, args.split), cfg.max_context)
    sets = candidate_sets(triples, args.distractors, args.seed)   # drawn from the whole split
    if args.max_contexts:
        triples, sets = triples[:args.max_contexts], sets[:args.max_contexts]
    t0 = time.time()
    contexts = [encode_turns(sp, c, cfg.max_utt_len, cfg.max_context) for c, _, _ in triples]
    candidates = [[sp.encode(r)[:cfg.max_utt_len] for r in s] for s in sets]
    metrics = rank_scores(model, contexts, candidates, KINDS, args.iw_samples, args.seed, progress)
    print(file=sys.stderr)
    result = {"checkpoint": path, "model": cfg.arch.model, "split": args.split, "contexts": len(triples),
              "candidates": args.distractors + 1, "iw_samples": args.iw_samples, "seed": args.seed,
              "metrics": metrics, "settings": vars(args), "seconds": round(time.time() - t0, 1)}
    with output_file(out) as f:   # whole or not at all
        json.dump(json_safe(result), f, indent=1, allow_nan=False)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
