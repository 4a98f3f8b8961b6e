"""What blind readers kept before: of each reply, how often readers kept it after each kind of last
turn, and the order of the replies a run shows by it.

    vhred kept --checkpoint runs/dailydialog-cpu-vhred --ratings $(cat eval/critic_rounds.txt)   # writes kept.json

Readers keep "I see." after most statements and seldom after a question; "Yes." after a yes-no
question and seldom after a wh-question. The 38 rounds `make critic` learns from hold 46,018
labels, most of them of the same few hundred short turns, so for those the rounds say directly how
often readers kept each after each kind of last turn (vhred.rate.turn_kind: "wh", "yes-no", "other").
The table holds, per kind, each reply's labels (as the reader saw it, lowercased), and a reply's
share is smoothed toward the share of every reply after that kind of turn by SMOOTH pseudo-labels:

    p(reply | kind) = (kept + SMOOTH x p0(kind)) / (rated + SMOOTH)

A reply no reader saw gets p0. The chat, the API, `vhred generate` and `vhred serve` show the replies
the ranking chose, sorted by p, the ranking's order breaking ties (DecodeOptions.order "readers",
the default when the run's folder holds kept.json; "score" keeps the ranking's order). The five
stay the same five: the order changes which one goes first. Readers judge each reply alone, so
the order can be replayed on rated replies (`python -m eval.first_order --readers`): a kept reply
first in 4.4 [1.9, 6.7] more contexts of 100 (docs/rating-rounds.md, 89th round).
"""
import math

from .cli import command, Parser, program
from .files import load_table, save_table
from .rate import checked_rounds, rated_labels, turn_kind

FILE = "kept.json"
SMOOTH = 5     # pseudo-labels of the kind's share: chosen among 2-50 on the 80th-83rd rounds' contexts
KINDS = ("wh", "yes-no", "other")


def reply_key(text: str) -> str:
    """A reply as the table holds it: lowercased, the corpus's ’ an apostrophe, spaces single."""
    return " ".join(text.lower().replace("\u2019", "'").split())


def build(rounds: list[str]) -> dict:
    """The table of pointwise rating rounds: {"smooth": SMOOTH, "base": {kind: kept share of all its
    labels}, "kept": {kind: {reply: [kept, rated]}}}, every reader's label counted."""
    labels = {k: {} for k in KINDS}
    for folder in rounds:
        for turns, replies in rated_labels(folder):
            row = labels[turn_kind(turns)]
            for text, good, rated in replies:
                counts = row.setdefault(reply_key(text), [0, 0])
                counts[0] += good
                counts[1] += rated
    base = {}
    for k, row in labels.items():
        rated = sum(n for _, n in row.values())
        base[k] = sum(g for g, _ in row.values()) / rated if rated else 0.5
    return {"smooth": SMOOTH, "base": base, "kept": labels}


def share(table: dict, kind: str, text: str) -> float:
    """p(reply | kind): its readers' kept share, smoothed toward the kind's."""
    good, rated = table["kept"][kind].get(reply_key(text), (0, 0))
    a = table["smooth"]
    return (good + a * table["base"][kind]) / (rated + a)


def order(table: dict, last_turn: str, texts: list[str]) -> list[int]:
    """The indexes of texts (the replies to a turn, best first by the ranking) sorted by share,
    the ranking's order breaking ties."""
    kind = turn_kind([last_turn])
    shares = [share(table, kind, t) for t in texts]
    return sorted(range(len(texts)), key=lambda i: (-shares[i], i))


def save(table: dict, folder: str) -> str:
    return save_table(table, folder, FILE)


def load(run: str) -> dict | None:
    """The kept.json beside a run's checkpoint (or in a model folder), None without one."""
    return load_table(run, FILE, _well_formed, "vhred.kept",
                      "vhred kept --checkpoint {folder} --ratings DIR ...")


def _well_formed(table) -> bool:
    """As build() writes it: anything else would fail mid-ranking, so it is refused on load."""
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    counts = lambda c: isinstance(c, list) and len(c) == 2 and all(number(x) for x in c) and 0 <= c[0] <= c[1]
    return (isinstance(table, dict) and number(table.get("smooth")) and table["smooth"] > 0
            and isinstance(table.get("base"), dict) and isinstance(table.get("kept"), dict)
            and all(number(table["base"].get(k)) and 0 <= table["base"][k] <= 1 for k in KINDS)
            and all(isinstance(table["kept"].get(k), dict) and all(counts(c) for c in table["kept"][k].values())
                    for k in KINDS))


@command
def main(argv=None):
    p = Parser(prog=program("python -m vhred.kept"), description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a run folder or checkpoint; kept.json is written beside it")
    p.add_argument("--ratings", nargs="+", required=True, metavar="DIR",
                   help="pointwise rating rounds (key.json and rater*.txt), e.g. $(cat eval/critic_rounds.txt)")
    args = p.parse_args(argv)
    from . import checkpoint
    path = checkpoint.resolve(args.checkpoint)
    table = build(checked_rounds("--ratings", args.ratings))
    out = save(table, checkpoint.results_folder(path))
    labels = sum(n for row in table["kept"].values() for _, n in row.values())
    print(f"{out}: {labels:,} labels of {sum(map(len, table['kept'].values())):,} replies")


if __name__ == "__main__":
    main()
