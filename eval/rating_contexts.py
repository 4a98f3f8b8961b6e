"""The fixed held-out contexts of a blind rating pack (docs/rating.md), as a `vhred generate` input.

    python -m eval.rating_contexts --checkpoint RUN [--contexts 40] [--seed 1] [--exclude F ...]
                                   [--last-turn question|wh|yes-no|other] [--split validation] > contexts.jsonl

Test-split (context, reference) pairs drawn with the seed, leaving out the 200 that
eval/ranking_sweep.py (seed 0) tunes decoding and ranking on, and the contexts of the files given
with --exclude (those of earlier rounds, whose ratings tuned a choice), so the rated contexts are
unseen by every choice. With --last-turn, only contexts whose last turn is a question (ends with
"?"), one that asks what, where, when, why, who, which or how (wh), another question (yes-no), or
not a question (other): vhred.rate.turn_kind. With --split validation, the validation split's
pairs instead (no choice is tuned on them either; training picks its best epoch by the validation
ELBO, not by these replies): the test split has 2 wh-question contexts left that no round has rated.
Each line: {"context": [...], "reference": "..."}.
"""
import argparse
import json
import random

from vhred import checkpoint
from vhred.evaluate import split_dialogues
from vhred.metrics.protocol import context_pairs
from vhred.rate import LAST_TURN_KINDS, last_turn_is

SWEEP_SEED, SWEEP_CONTEXTS = 0, 200


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--contexts", type=int, default=40)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--exclude", nargs="*", default=[], help="contexts.jsonl files whose contexts to leave out")
    p.add_argument("--last-turn", choices=LAST_TURN_KINDS, default="",
                   help="only contexts whose last turn is of this kind (vhred.rate.turn_kind)")
    p.add_argument("--split", choices=("test", "validation"), default="test")
    args = p.parse_args()
    seen = {tuple(json.loads(line)["context"]) for f in args.exclude for line in open(f, encoding="utf-8")}
    path = checkpoint.resolve(args.checkpoint)
    cfg = checkpoint.config_of(checkpoint.load(path), path)
    pairs = context_pairs(split_dialogues(cfg, args.split), cfg.max_context)
    tuned = set(random.Random(SWEEP_SEED).sample(range(len(pairs)), min(SWEEP_CONTEXTS, len(pairs)))) \
        if args.split == "test" else set()
    free = [i for i in range(len(pairs)) if i not in tuned and tuple(pairs[i][0]) not in seen
            and (not args.last_turn or last_turn_is(pairs[i][0], args.last_turn))]
    if args.contexts > len(free):
        raise SystemExit(f"only {len(free)} {args.split} contexts{' of that kind' if args.last_turn else ''} are left "
                         f"once the sweep's and the --exclude files' are left out: ask for --contexts {len(free)} or "
                         f"fewer{', or take --split validation' if args.split == 'test' else ''}")
    for i in sorted(random.Random(args.seed).sample(free, args.contexts)):
        print(json.dumps({"context": pairs[i][0], "reference": pairs[i][1]}, ensure_ascii=False))


if __name__ == "__main__":
    main()
