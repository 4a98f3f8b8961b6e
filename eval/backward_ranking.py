"""Does a backward model rank the drawn replies as readers do? (docs/rating-rounds.md, sixth round)

    python -m eval.backward_ranking reverse --out reversed.jsonl        # DailyDialog, turns reversed
    vhred train --config configs/dailydialog-cpu.yaml data=reversed.jsonl model=hred max_context=1 max_steps=1500
    python -m eval.backward_ranking rank --backward RUN --round DIR [--round DIR ...] [--system b]

The MMI-bidi score of Li et al. (2016): log p(r | c) - lambda log p(r) per token + gamma |r|
(the shipped score) + mu log p(c_last | r), where p(c_last | r) is a backward model: one trained
on the dialogues with their turns reversed and one turn of context, so that it reads a reply and
gives the likelihood of the turn it answers. A reply that fits the last turn makes that turn
likely; one that would fit anything ("OK.") or another turn does not.

Each DIR holds a round written by eval/candidate_ceiling.py pool and rated (key.json,
rater*.txt, sys-NAME.jsonl). For each mu and gamma, the top-1 and five-shown good shares the score
reaches from the rated draws, the mean over the readers (the ceiling: eval/candidate_ceiling.py).
"""
import json
import os
import statistics

from vhred.cli import command, Parser
from vhred import loading
from vhred.decoding import DecodeOptions
from vhred.sources import spaced
from vhred.rate import read_answers, read_key
from vhred.scoring import log_likelihoods, RANK_SAMPLES

from eval.candidate_ceiling import labelled, mmi, shares

MUS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
GAMMAS = (0.0, -0.1, -0.3)


def backward_scores(run: str, rows: list[dict]) -> list[list[float]]:
    """log p(c_last | r) in nats under the backward model, for every reply of every row."""
    model, cfg, sp = loading.load_model(run)
    out = []
    for row in rows:
        last = sp.encode(spaced(row["context"][-1]))[:cfg.max_utt_len]
        replies = [[sp.encode(spaced(t))[:cfg.max_utt_len]] for t in row["samples"]]
        lp, _ = log_likelihoods(model, replies, [last] * len(replies), RANK_SAMPLES, 0)
        out.append(lp)
    return out


def score(mu: float, gamma: float, lam: float = DecodeOptions.mmi_lambda):
    """The shipped MMI score (faulty replies last) + mu log p(c_last | r)."""
    base = mmi(lam, gamma)

    def order(r):
        clean, shipped = base(r)
        return clean, shipped + mu * r["lbw"]
    return order


def reverse(out: str):
    """DailyDialog's dialogues with their turns in reverse order, its splits kept, as vhred's jsonl."""
    from vhred.sources import find_dailydialog, read_dailydialog
    with open(out, "w", encoding="utf-8") as f:
        for split, dialogues in read_dailydialog(find_dailydialog("data")).items():
            for d in dialogues:
                f.write(json.dumps({"dialog": d[::-1], "split": split}) + "\n")


@command
def main(argv=None):
    p = Parser(prog="python -m eval.backward_ranking", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("reverse", help="write DailyDialog with each dialogue's turns reversed")
    a.add_argument("--out", required=True)
    b = sub.add_parser("rank", help="top-1 and five-shown good shares with the backward score")
    b.add_argument("--backward", required=True, help="run folder of the backward model")
    b.add_argument("--round", action="append", required=True, help="a rated pool round's folder (repeatable)")
    b.add_argument("--system", default="b", help="the pool system to rank (default %(default)s)")
    args = p.parse_args(argv)
    if args.cmd == "reverse":
        return reverse(args.out)
    results = {}   # (mu, gamma) -> [(top1, five) per reader]
    for d in args.round:
        rows = [json.loads(line) for line in open(os.path.join(d, f"sys-{args.system}.jsonl"), encoding="utf-8")]
        for row, lbw in zip(rows, backward_scores(args.backward, rows)):
            row["lbw"] = lbw
        key = read_key(os.path.join(d, "key.json"))
        for name in sorted(os.listdir(d)):
            if not (name.startswith("rater") and name.endswith(".txt")):
                continue
            contexts = labelled(rows, key, read_answers(os.path.join(d, name), key), args.system)
            for mu in MUS:
                for gamma in GAMMAS:
                    results.setdefault((mu, gamma), []).append(shares(contexts, score(mu, gamma)))
    print("| mu (backward) | gamma | top-1 good | five shown good |\n|---|---|---|---|")
    for (mu, gamma), v in results.items():
        print(f"| {mu} | {gamma} | {statistics.mean(a for a, _ in v):.0%} | {statistics.mean(b for _, b in v):.0%} |")


if __name__ == "__main__":
    main()
