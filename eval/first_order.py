"""Which of the shown replies should go first? An order replayed on a round's labels (docs/rating-rounds.md, eighty-third round)

    python -m eval.first_order --checkpoint RUN --round DIR=SYSTEM [--round DIR=SYSTEM ...]
                               [--weights 0,0.25,0.5,0.75,1 | --readers [--critic-weights W,...]] [--boot 2000]

Readers judge each reply on its own, shuffled among the others of its context, so a reply's label
does not depend on the place the chat gave it: an order of the replies a system showed is measured
exactly on the labels they got, with no new round. Each DIR is a pointwise round (key.json,
rater*.txt, sys-SYSTEM.jsonl: the system's replies best first, with their ranking scores).

A ranking score of rank "critic" is the critic's logit plus the rest: critic.MMI_WEIGHT x the MMI
score and the answer score after a wh-question. RUN's critic gives each shown reply's logit again,
so RUN must hold the critic that ranked the round (its rest is the score less that logit). For each
weight w the shown replies are ordered by logit + w x rest; w = 1 is the order shown. Prints one
JSON line per weight: the first reply's good share over every reader, and its difference from the
order shown, paired by context, each with a 95% interval by the bootstrap over contexts.

--readers orders the shown replies instead as the chat does with RUN's kept.json (vhred/kept.py:
how often readers of its rounds kept each reply after that kind of last turn), the order shown
breaking ties; the system's rows need no scores then, and RUN no critic (eighty-ninth round).
With --critic-weights, each weight c orders them by the log-odds of that share plus c x the critic's
logit of the reply (c = 0 is --readers alone): whether the critic, which reads the turn's words,
adds to the readers' share, which reads only the kind of turn (it did not: docs/decoding.md).
"""
import json
import math
import os

from eval.pooled_rating import bootstrap, context_labels
from vhred import critic, kept, loading
from vhred.cli import command, Parser
from vhred.errors import InputError
from vhred.rate import read_key, read_system, turn_kind
from vhred.render import encode_turns, uncut
from vhred.sources import spaced

WEIGHTS = "0,0.25,0.5,0.75,1"


def shown_rows(folder: str, system: str, contexts: int, unscored: bool = False) -> list[dict]:
    """The system's rows of a round (sys-SYSTEM.jsonl): context, samples best first and their
    ranking scores (unscored: scores not needed), for each of the key's contexts."""
    path = os.path.join(folder, f"sys-{system}.jsonl")
    if not os.path.isfile(path):
        raise InputError(f"{path} not found: give DIR=SYSTEM of a round whose folder holds the system's replies")
    rows = read_system(f"{system}={path}")[2]
    if len(rows) < contexts:
        raise InputError(f"{path} holds {len(rows)} contexts and the round's key {contexts}: is it this round's file?")
    if not unscored and any("scores" not in r for r in rows):
        raise InputError(f"{path} has rows without a score for each reply: only a ranked system (rank critic) "
                         "can be ordered again")
    return rows


def logits(run, rows: list[dict], contexts: list[int]) -> dict[int, list[float]]:
    """{context: the critic's logit of each shown reply, in the order shown}, each read as the
    ranking read it: the text shown, without the mark of a reply cut at the length limit."""
    model, cfg, sp = run
    out = {}
    for c in contexts:
        turns = encode_turns(sp, [spaced(t) for t in rows[c]["context"]], cfg.max_utt_len, cfg.max_context)
        texts = [uncut(t) for t in rows[c]["samples"]]
        out[c] = critic.scores(model.reply_critic, [turns] * len(texts), [critic.reply_ids(sp, t) for t in texts])
    return out


def reorder(labels: list[list[bool]], logit: list[float], score: list[float], w: float) -> list[list[bool]]:
    """Each reader's labels, the first moved to the reply that logit + w x (score - logit) puts first."""
    n = min(len(labels[0]), len(score))
    best = max(range(n), key=lambda i: logit[i] + w * (score[i] - logit[i]))
    return [[r[best]] for r in labels]


def readers_first(labels: list[list[bool]], table: dict, row: dict, logit=None, c: float = 0.0) -> list[list[bool]]:
    """Each reader's labels, the first moved to the reply kept.order puts first; with the critic's
    logit of each reply and c > 0, the one with the most log-odds of its share + c x logit."""
    n = min(len(labels[0]), len(row["samples"]))
    if not c:
        best = kept.order(table, row["context"][-1], row["samples"][:n])[0]
    else:
        kind = turn_kind([row["context"][-1]])
        shares = [min(max(kept.share(table, kind, t), 1e-6), 1 - 1e-6) for t in row["samples"][:n]]
        odds = [math.log(p / (1 - p)) for p in shares]
        best = max(range(n), key=lambda i: (odds[i] + c * logit[i], -i))
    return [[r[best]] for r in labels]


def first_share(units) -> tuple[float, float]:
    """(difference from the order shown, first-reply good share) over units of (reordered, shown)."""
    first = sum(r[0] for u, _ in units for r in u) / sum(len(u) for u, _ in units)
    shown = sum(r[0] for _, u in units for r in u) / sum(len(u) for _, u in units)
    return first - shown, first


@command
def main(argv=None):
    p = Parser(prog="python -m eval.first_order", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="the run whose critic ranked the rounds' system")
    p.add_argument("--round", action="append", required=True, metavar="DIR=SYSTEM",
                   help="a round's folder and the system's letter in its key; repeat for each round")
    p.add_argument("--weights", default=WEIGHTS, help="weights w of the rest of the score (default %(default)s)")
    p.add_argument("--readers", action="store_true",
                   help="order the shown replies by RUN's kept.json instead, as the chat does (vhred/kept.py)")
    p.add_argument("--critic-weights", default="", metavar="W,...",
                   help="with --readers: also order by the share's log-odds + W x RUN's critic logit, for each W")
    p.add_argument("--boot", type=int, default=2000, help="bootstrap draws (default %(default)s)")
    args = p.parse_args(argv)
    weights = numbers(p, "--weights", args.weights)
    critic_weights = numbers(p, "--critic-weights", args.critic_weights) if args.critic_weights else []
    if critic_weights and not args.readers:
        p.error("--critic-weights goes with --readers: it adds the critic to the readers' order")
    if args.boot < 100:
        p.error("--boot must be at least 100")
    run = loading.load_model(args.checkpoint)
    if args.readers and run[0].readers_table is None:
        raise InputError(f"{args.checkpoint} has no kept.json: write it with `vhred kept --checkpoint RUN --ratings DIR ...`")
    if (critic_weights or not args.readers) and run[0].reply_critic is None:
        raise InputError(f"{args.checkpoint} has no reply critic (critic.safetensors): give the run that ranked the rounds")
    rounds = []
    for spec in args.round:
        folder, _, system = spec.rpartition("=")
        if not folder or not system:
            p.error(f"--round takes DIR=SYSTEM, e.g. eval/ratings/2026-12-05-first-order/p1=m; got {spec}")
        labels = context_labels(folder, system)
        rows = shown_rows(folder, system, len(read_key(os.path.join(folder, "key.json"))["contexts"]), args.readers)
        scored = critic_weights or not args.readers
        rounds.append((labels, rows, logits(run, rows, sorted(labels)) if scored else None))
    if args.readers:
        table = run[0].readers_table
        for c in critic_weights or [0.0]:
            report({"order": "readers", **({"critic_weight": c} if critic_weights else {})},
                   [(readers_first(lab, table, rows[k], logit[k] if logit else None, c), [r[:1] for r in lab])
                    for labels, rows, logit in rounds for k, lab in labels.items()], args.boot)
        return
    for w in weights:
        report({"weight": w}, [(reorder(lab, logit[c], rows[c]["scores"], w), [r[:1] for r in lab])
                               for labels, rows, logit in rounds for c, lab in labels.items()], args.boot)


def numbers(p, flag: str, text: str) -> list[float]:
    """A flag's comma-separated finite numbers, or the parser's one-line error."""
    try:
        out = [float(w) for w in text.split(",")]
    except ValueError:
        out = [math.nan]
    if not all(math.isfinite(w) for w in out):
        p.error(f"{flag} takes numbers separated by commas, e.g. {WEIGHTS}; got {text}")
    return out


def report(head: dict, units, boot: int):
    """One JSON line: an order's first-reply share and its difference from the order shown."""
    (diff, first), (diff_ci, first_ci) = first_share(units), bootstrap(units, boot, stat=first_share)
    print(json.dumps({**head, "contexts": len(units), "first": round(first, 4),
                      "first_95": [round(x, 4) for x in first_ci], "minus_shown": round(diff, 4),
                      "minus_shown_95": [round(x, 4) for x in diff_ci]}))


if __name__ == "__main__":
    main()
