"""One system's good shares over several blind rating rounds (docs/rating-rounds.md, "All the rounds of the default")

    python -m eval.pooled_rating --round eval/ratings/2026-11-30-floor=n [--round DIR=SYSTEM ...] [--boot 2000]
                                 [--versus SYSTEM] [--last-turn question|wh|yes-no|other ...] [--content RUN]

Each round folder holds the key.json of `vhred rate pack` and one rater*.txt per reader. For the
system named in each round, over every reader of every round: the good share of the replies shown
(up to five a context) and of the first reply, with a 95% interval by the bootstrap over contexts
(a context's readers drawn together, since two readers of one reply are not two samples of it).
A Wilson interval over all labels would treat them as independent and come out too narrow.
Prints one JSON line per round and one for all of them.

--versus B compares the system with system B of the same rounds, context by context: the
difference of both shares (system - B) with its 95% interval, by the bootstrap over the contexts
both were shown in (each context's replies of both systems, by all its readers, drawn together).
Two systems rated on the same contexts by the same readers are compared more tightly this way
than by two separate intervals: what makes one context hard makes it hard for both.

--last-turn question keeps only the contexts whose last turn ends with "?", other the rest: a
reply to a question has to answer it, where an acknowledgement fits after most statements. wh
keeps the questions that ask what, where, when, why, who, which or how, yes-no the other
questions (vhred.rate.turn_kind): "Yes." can answer the second kind, never the first. Repeated,
it keeps the contexts of any kind named (--last-turn yes-no --last-turn other: all but wh).

--content RUN counts a reply as good only when readers kept it and it is not a stock turn of RUN's
training text (vhred/metrics/stock.py: "OK.", "I see.", "Thank you.", said whole 10 times or
more): the share of replies kept that say something of their own.
"""
import glob
import json
import os
import random

from vhred.cli import command, Parser
from vhred.errors import InputError
from vhred.metrics.stock import is_stock
from vhred.rate import LAST_TURN_KINDS, last_turn_is, lexicon_and_stock, read_answers, read_key


def context_labels(folder: str, system: str, last_turn=(), stock: frozenset = frozenset()) -> dict[str, list[list[bool]]]:
    """{context: [labels by rank, one list per reader]} for one system of one round; with
    last_turn a few of LAST_TURN_KINDS, only the contexts whose last turn is of one of those kinds;
    a reply that is one of the stock turns counts as not kept."""
    key = read_key(os.path.join(folder, "key.json"))
    if key["kind"] != "pointwise":
        raise InputError(f"{folder} is a {key['kind']} round; this command pools good/bad labels of pointwise "
                         "rounds (`vhred rate score` reads a pairwise one)")
    raters = sorted(glob.glob(os.path.join(folder, "rater*.txt")))
    if not raters:
        raise InputError(f"{folder} has no rater*.txt: rate its pack.txt first")
    shown, stocked = {}, set()   # context -> [(rank, id)]; the ids of stock replies
    for item, entries in key["items"].items():
        for e in entries:
            if e["system"] == system:
                shown.setdefault(e["context"], []).append((e["rank"], item))
                if stock and is_stock(e["text"], stock):   # no stock turns given: no text to read
                    stocked.add(item)
    if not shown:
        raise InputError(f"{folder}: no system '{system}' in its key")
    if last_turn:
        shown = {c: ranked for c, ranked in shown.items() if any(last_turn_is(key["contexts"][c], k) for k in last_turn)}
    out = {}
    for path in raters:
        answers = read_answers(path, key)
        ids = {i for ranked in shown.values() for _, i in ranked}
        missing = ids - answers.keys()
        if missing:
            raise InputError(f"{path} does not answer {len(missing)} of the {len(ids)} ids of system '{system}'")
        for ctx, ranked in shown.items():
            out.setdefault(ctx, []).append([answers[i] == "good" and i not in stocked for _, i in sorted(ranked)])
    return out


def shares(units: list[list[list[bool]]]) -> tuple[float, float]:
    """Good share of all shown replies and of the first replies, over units of readers' labels."""
    good = sum(sum(r) for u in units for r in u)
    shown = sum(len(r) for u in units for r in u)
    first = sum(r[0] for u in units for r in u)
    return good / shown, first / sum(len(u) for u in units)


def difference(pairs: list[tuple]) -> tuple[float, float]:
    """Both shares of one system minus the other's, over (its units, the other's) by context."""
    (five_a, first_a), (five_b, first_b) = shares([a for a, _ in pairs]), shares([b for _, b in pairs])
    return five_a - five_b, first_a - first_b


def bootstrap(units, draws: int, seed: int = 0, stat=shares) -> tuple[tuple[float, float], tuple[float, float]]:
    """95% intervals (2.5th and 97.5th percentiles) of both figures of stat, resampling the units."""
    rng = random.Random(seed)
    five, first = zip(*(stat([rng.choice(units) for _ in units]) for _ in range(draws)))
    lo, hi = int(0.025 * draws), int(0.975 * draws) - 1
    return (sorted(five)[lo], sorted(five)[hi]), (sorted(first)[lo], sorted(first)[hi])


def summary(name: str, units, draws: int, stat=shares) -> dict:
    (five, first), (five_ci, first_ci) = stat(units), bootstrap(units, draws, stat=stat)
    readers = [u[0] if stat is difference else u for u in units]         # a pair's readers: its first system's
    return {"rounds": name, "contexts": len(units), "ratings": sum(len(r) for r in readers),
            "five": round(five, 4), "five_95": [round(x, 4) for x in five_ci],
            "first": round(first, 4), "first_95": [round(x, 4) for x in first_ci]}


@command
def main(argv=None):
    p = Parser(prog="python -m eval.pooled_rating", description=__doc__.split("\n\n")[0])
    p.add_argument("--round", action="append", required=True, metavar="DIR=SYSTEM",
                   help="a round's folder and the system's letter in its key; repeat for each round")
    p.add_argument("--boot", type=int, default=2000, help="bootstrap draws (default %(default)s)")
    p.add_argument("--versus", metavar="SYSTEM",
                   help="also the difference from this system of the same rounds, paired by context")
    p.add_argument("--last-turn", choices=LAST_TURN_KINDS, action="append", default=[],
                   help="only the contexts whose last turn is of this kind (vhred.rate.turn_kind); repeat "
                        "for several")
    p.add_argument("--content", metavar="RUN",
                   help="count a kept reply only when it is not a stock turn of this run's training text")
    args = p.parse_args(argv)
    if args.boot < 100:
        p.error("--boot must be at least 100")
    if args.content is not None and not args.content.strip():   # an unset shell variable: say so
        raise InputError("--content is empty; give the run whose training text has the stock turns, or leave it out")
    stock = lexicon_and_stock(args.content, "--content")[1] if args.content else frozenset()
    everything, pairs = [], []
    for spec in args.round:
        folder, sep, system = spec.rpartition("=")
        if not sep or not folder or not system:
            p.error(f"--round {spec}: expected DIR=SYSTEM, e.g. eval/ratings/2026-11-30-floor=n")
        labels = context_labels(folder, system, args.last_turn, stock)
        everything += labels.values()
        if labels:   # --last-turn may leave a round none
            print(json.dumps(summary(spec, list(labels.values()), args.boot)))
        if args.versus:
            other = context_labels(folder, args.versus, args.last_turn, stock)
            pairs += [(labels[c], other[c]) for c in labels if c in other]
    if not everything:
        raise InputError(f"no context of these rounds has a last turn of kind '{' or '.join(args.last_turn)}'")
    print(json.dumps(summary("all", everything, args.boot)))
    if args.versus:
        if not pairs:
            raise InputError(f"no context was shown with both systems and '{args.versus}'")
        print(json.dumps({"versus": args.versus, **summary("all, minus " + args.versus, pairs, args.boot, difference)}))


if __name__ == "__main__":
    main()
