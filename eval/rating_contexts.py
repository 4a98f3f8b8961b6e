"""The fixed held-out contexts of a blind rating pack (docs/rating.md), as a `vhred generate` input.

    python -m eval.rating_contexts --checkpoint RUN [--contexts 40] [--seed 1] [--exclude F ...]
                                   [--last-turn question|wh|yes-no|other | --mix wh=N,yes-no=N,other=N]
                                   [--split validation] > contexts.jsonl

Test-split (context, reference) pairs drawn with the seed, leaving out the 200 that
eval/ranking_sweep.py (seed 0) tunes decoding and ranking on, and the contexts of the files given
with --exclude (those of earlier rounds, whose ratings tuned a choice), so the rated contexts are
unseen by every choice. With --last-turn, only contexts whose last turn is a question (ends with
"?"), one that asks what, where, when, why, who, which or how (wh), another question (yes-no), or
not a question (other): vhred.rate.turn_kind. With --mix, so many of each kind instead of
--contexts, in shuffled order (so that packs cut from the file hold every kind): a round rated
on the test split's mix of turns (--mix wh=40,yes-no=43,other=157 is the 720 rated test contexts'
17% / 18% / 65%). With --split validation, the validation split's
pairs instead (no choice is tuned on them either; training picks its best epoch by the validation
ELBO, not by these replies): the test split has 2 wh-question contexts left that no round has rated.
Each line: {"context": [...], "reference": "..."}.
"""
import argparse
import json
import random

from vhred import checkpoint
from vhred.cli import command, Parser
from vhred.errors import InputError
from vhred.files import text_lines
from vhred.metrics.protocol import context_pairs
from vhred.rate import LAST_TURN_KINDS, TURN_KINDS, last_turn_is, turn_kind
from vhred.sources import split_dialogues

SWEEP_SEED, SWEEP_CONTEXTS = 0, 200


def parse_mix(text: str) -> dict[str, int]:
    """"wh=40,yes-no=43,other=157" -> {"wh": 40, "yes-no": 43, "other": 157}."""
    mix = {}
    for part in text.split(","):
        kind, _, count = part.partition("=")
        if kind not in TURN_KINDS or not count.isdigit() or int(count) < 1 or kind in mix:
            raise argparse.ArgumentTypeError(f"KIND=N pairs, each kind once, of {', '.join(TURN_KINDS)} (N >= 1), "
                                             f"e.g. wh=40,yes-no=43,other=157; not '{part}'")
        mix[kind] = int(count)
    return mix


def draw(free: list[int], count: int, rng: random.Random, split: str, of_kind: str, ask: str) -> list[int]:
    """count of the free pair indices, or one line saying how many are left (ask: the flag to
    ask for fewer, with {n} for the number)."""
    if count > len(free):
        raise InputError(f"only {len(free)} {split} contexts{of_kind} are left once the sweep's and the "
                         f"--exclude files' are left out: ask for {ask.format(n=len(free))} or "
                         f"fewer{', or take --split validation' if split == 'test' else ''}")
    return rng.sample(free, count)


def excluded(files: list[str]) -> set[tuple]:
    """The contexts of the --exclude files (contexts.jsonl of earlier rounds), as tuples of turns."""
    seen = set()
    for path in files:
        for n, line in enumerate(text_lines(path), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            turns = row.get("context") if isinstance(row, dict) else None
            if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
                raise InputError(f"--exclude {path}: line {n} is not a {{\"context\": [...]}} line; give the "
                                 "contexts.jsonl files of earlier rounds")
            seen.add(tuple(turns))
    return seen


@command
def main(argv=None):
    p = Parser(prog="python -m eval.rating_contexts", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--contexts", type=int, default=40)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--exclude", nargs="*", default=[], help="contexts.jsonl files whose contexts to leave out")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--last-turn", choices=LAST_TURN_KINDS, default="",
                      help="only contexts whose last turn is of this kind (vhred.rate.turn_kind)")
    kind.add_argument("--mix", type=parse_mix, default=None, metavar="KIND=N,...",
                      help="so many contexts of each kind of last turn (wh, yes-no, other), shuffled; replaces --contexts")
    p.add_argument("--split", choices=("test", "validation"), default="test")
    args = p.parse_args(argv)
    if args.contexts < 1:
        raise InputError(f"--contexts must be at least 1, got {args.contexts}")
    seen = excluded(args.exclude)
    path = checkpoint.resolve(args.checkpoint)
    cfg = checkpoint.config_of(checkpoint.load(path), path)
    pairs = context_pairs(split_dialogues(cfg, args.split), cfg.max_context)
    tuned = set(random.Random(SWEEP_SEED).sample(range(len(pairs)), min(SWEEP_CONTEXTS, len(pairs)))) \
        if args.split == "test" else set()
    free = [i for i in range(len(pairs)) if i not in tuned and tuple(pairs[i][0]) not in seen
            and (not args.last_turn or last_turn_is(pairs[i][0], args.last_turn))]
    rng = random.Random(args.seed)
    if args.mix:
        kind_of = {i: turn_kind(pairs[i][0]) for i in free}   # once per context, not once per kind asked for
        chosen = [i for k, n in args.mix.items()
                  for i in draw([i for i in free if kind_of[i] == k], n, rng, args.split,
                                f" of kind {k}", f"--mix {k}={{n}}")]
        rng.shuffle(chosen)
    else:
        chosen = sorted(draw(free, args.contexts, rng, args.split, " of that kind" if args.last_turn else "",
                             "--contexts {n}"))
    for i in chosen:
        print(json.dumps({"context": pairs[i][0], "reference": pairs[i][1]}, ensure_ascii=False))


if __name__ == "__main__":
    main()
