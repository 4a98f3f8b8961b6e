"""The fixed held-out contexts of a blind rating pack (docs/rating.md), as a `vhred generate` input.

    python -m eval.rating_contexts --checkpoint RUN [--contexts 40] [--seed 1] > contexts.jsonl

Test-split (context, reference) pairs drawn with the seed, leaving out the 200 that
eval/ranking_sweep.py (seed 0) tunes decoding and ranking on, so the rated contexts are unseen
by every choice. Each line: {"context": [...], "reference": "..."}.
"""
import argparse
import json
import random

from vhred import checkpoint
from vhred.evaluate import split_dialogues
from vhred.metrics.protocol import context_pairs

SWEEP_SEED, SWEEP_CONTEXTS = 0, 200


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--contexts", type=int, default=40)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    path = checkpoint.resolve(args.checkpoint)
    cfg = checkpoint.config_of(checkpoint.load(path), path)
    pairs = context_pairs(split_dialogues(cfg, "test"), cfg.max_context)
    tuned = set(random.Random(SWEEP_SEED).sample(range(len(pairs)), min(SWEEP_CONTEXTS, len(pairs))))
    free = [i for i in range(len(pairs)) if i not in tuned]
    for i in sorted(random.Random(args.seed).sample(free, args.contexts)):
        print(json.dumps({"context": pairs[i][0], "reference": pairs[i][1]}, ensure_ascii=False))


if __name__ == "__main__":
    main()
