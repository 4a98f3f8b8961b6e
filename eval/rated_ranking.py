"""Which ranking score puts first the replies blind readers kept? (docs/rating-rounds.md, fourth round)

    python -m eval.rated_ranking --checkpoint RUN --round DIR [--round DIR ...] [--systems b,d,l] [--draws 40]

Each DIR is a rating round of eval/ratings/ (contexts.jsonl, key.json, rater*.txt) made with this
checkpoint; --systems names the systems in them that decoded from it. For each context the
checkpoint's greedy draws are decoded again with the shipped seeds (--draws of them: what the
chat draws for 5 shown), scored with log p(r | c) and log p(r | neutral) as ranking scores them,
and matched to the rated replies by the words a reader sees (candidates.reply_key). For each
score, the pairwise accuracy within contexts: of two rated replies to one context that the
readers judged differently, how often the score puts the kept one first (0.5 is chance; a pair
counts by how far apart the readers' good shares are). Only rated replies count, and they are
those earlier rankings put first: the figures choose what to rate next, not a default.
"""
import collections
import itertools
import json
import os

from vhred import loading
from vhred.cli import command, Parser
from vhred.candidates import generate, reply_key, same_reply
from vhred.decoding import DecodeOptions
from vhred.render import encode_turns
from vhred.sources import spaced
from vhred.rate import read_answers, read_key
from vhred.scoring import log_likelihoods, NEUTRAL, RANK_SAMPLES

LAMBDAS = (0.0, 0.25, 0.5, 1.0)
GAMMAS = (0.0, -0.05, -0.1, -0.2, -0.3, -0.5)


def rated(rounds: list[str], systems: set[str], contexts: list[list[str]]) -> dict:
    """{(context index, reply text): [1 good / 0 bad, one per reader]} over the rounds' raters."""
    index = {tuple(c): i for i, c in enumerate(contexts)}
    labels = collections.defaultdict(list)
    for d in rounds:
        key = read_key(os.path.join(d, "key.json"))
        for name in sorted(os.listdir(d)):
            if not (name.startswith("rater") and name.endswith(".txt")):
                continue
            for item_id, answer in read_answers(os.path.join(d, name), key).items():
                item = next((it for it in key["items"][item_id] if it["system"] in systems), None)
                if item and tuple(key["contexts"][item["context"]]) in index:
                    labels[(index[tuple(key["contexts"][item["context"]])], item["text"])].append(answer == "good")
    return labels


def draws(model, cfg, sp, contexts: list[list[str]], n: int, method: str = "greedy") -> list[list[dict]]:
    """Each context's n draws (greedy or beam words per z, the shipped seeds): reply ids,
    log p(r | c), log p(r | neutral), tokens."""
    opts = DecodeOptions(num_samples=n, rank="none", dedup=False, method=method)
    out = []
    for ctx in contexts:
        ids = encode_turns(sp, [spaced(t) for t in ctx], cfg.max_utt_len, cfg.max_context)
        replies = [list(r[0]) for r in generate(model, [ids], opts)[0]]
        lpc, tokens = log_likelihoods(model, [ids] * n, replies, RANK_SAMPLES, 0)
        lpn, _ = log_likelihoods(model, [NEUTRAL] * n, replies, RANK_SAMPLES, 0)
        out.append([{"ids": r, "lpc": a, "lpn": b, "n": t} for r, a, b, t in zip(replies, lpc, lpn, tokens)])
    return out


def accuracy(pairs_by_context: list[list[tuple[dict, float]]], score) -> float:
    """Weighted share of differently judged pairs (same context) that score orders as the readers."""
    right = total = 0.0
    for items in pairs_by_context:
        for (r1, y1), (r2, y2) in itertools.combinations(items, 2):
            if y1 == y2:
                continue
            s1, s2, w = score(r1), score(r2), abs(y1 - y2)
            total += w
            right += w * (1.0 if (s1 > s2) == (y1 > y2) else 0.5 if s1 == s2 else 0.0)
    return right / total if total else float("nan")


def mmi(lam: float, gamma: float):
    return lambda r: (r["lpc"] - lam * r["lpn"]) / r["n"] + gamma * r["n"]


@command
def main(argv=None):
    p = Parser(prog="python -m eval.rated_ranking", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--round", action="append", required=True, help="a rating round's folder (repeatable)")
    p.add_argument("--systems", default="b,d,l", help="the rounds' systems that decoded from this checkpoint")
    p.add_argument("--draws", type=int, default=40)
    args = p.parse_args(argv)
    contexts = [json.loads(line)["context"] for line in open(os.path.join(args.round[0], "contexts.jsonl"), encoding="utf-8")]
    labels = rated(args.round, set(args.systems.split(",")), contexts)
    model, cfg, sp = loading.load_model(args.checkpoint)
    key = same_reply(sp)
    words = collections.defaultdict(list)
    for (c, t), v in labels.items():
        words[(c, reply_key(t))] += v
    matched = []
    for c, rows in enumerate(draws(model, cfg, sp, contexts, args.draws)):
        seen = {}
        for r in rows:
            seen.setdefault(key(r["ids"]), r)
        matched.append([(r, sum(words[(c, k)]) / len(words[(c, k)])) for k, r in seen.items() if (c, k) in words])
    n = sum(len(m) for m in matched)
    print(f"{len(labels)} rated replies of {len(contexts)} contexts, {n} of them among the {args.draws} draws\n")
    print("| score | pairwise accuracy |\n|---|---|")
    for name, f in [("ll", mmi(0, 0)), ("pmi", mmi(1, 0)), ("shorter first", lambda r: -r["n"])]:
        print(f"| {name} | {accuracy(matched, f):.3f} |")
    for lam, gamma in itertools.product(LAMBDAS, GAMMAS):
        print(f"| mmi lambda {lam} gamma {gamma} | {accuracy(matched, mmi(lam, gamma)):.3f} |")


if __name__ == "__main__":
    main()
