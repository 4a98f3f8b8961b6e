"""Replay: rank each context's rated replies (the human one left out) by each run's own ranking score
(vhred.load(run).score: critic + 2 x MMI + the answer score); the good share of the first (the mean of its
readers), and of the best rated reply (oracle).

    PYTHONPATH=$PWD python eval/ratings/2026-12-02-critic-wh/replay.py RUN[,RUN...] ROUND_DIR [ROUND_DIR ...]
"""
import collections, glob, os, sys
import torch
import vhred
from vhred.rate import read_answers, read_key

def contexts(rounds, skip=("h",)):
    out = []
    for d in rounds:
        key = read_key(os.path.join(d, "key.json"))
        votes = collections.defaultdict(list)
        for f in sorted(glob.glob(os.path.join(d, "rater*.txt"))):
            for i, a in read_answers(f, key).items():
                votes[i].append(a == "good")
        by_ctx = collections.defaultdict(dict)
        for i, items in key["items"].items():
            if all(it["system"] in skip for it in items) or i not in votes:
                continue
            c = items[0]["context"]
            by_ctx[c][items[0]["text"]] = sum(votes[i]) / len(votes[i])
        for c, replies in sorted(by_ctx.items()):
            out.append((key["contexts"][c], replies))
    return out

if __name__ == "__main__":
    torch.set_num_threads(2)
    runs, rounds = sys.argv[1].split(","), sys.argv[2:]
    data = contexts(rounds)
    for run in runs:
        bot = vhred.load(run)
        firsts = []
        for ctx, replies in data:
            texts = list(replies)
            s = bot.score(ctx, texts)
            firsts.append(replies[texts[max(range(len(texts)), key=lambda k: s[k])]])
        print(run, f"{len(data)} contexts: first good {100 * sum(firsts) / len(firsts):.1f}%",
              f"oracle {100 * sum(max(r.values()) for _, r in data) / len(data):.1f}%")
