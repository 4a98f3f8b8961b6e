"""A round's pooled good shares split by whether the training split holds the context's exchange (the same
reply after the same turn, as vhred.metrics.dialogwae.seen_in_training compares them): each system's share
of the five and of the first reply (a context's readers averaged), and each system minus the one given as
--versus on the unseen contexts, bootstrapped over contexts.
    PYTHONPATH=$PWD python eval/ratings/2026-12-02-copy/split.py --run runs/dailydialog-cpu-vhred --versus n DIR...
"""
import argparse
import collections
import glob
import json
import random

from vhred import checkpoint, loading
from vhred.sources import split_dialogues
from vhred.metrics.dialogwae import seen_in_training
from vhred.rate import read_answers, read_key

ap = argparse.ArgumentParser()
ap.add_argument("--run", required=True, help="a run whose config names the data (for its training split)")
ap.add_argument("--versus", default="n")
ap.add_argument("dirs", nargs="+")
opts = ap.parse_args()

_, cfg, _ = loading.load_model(checkpoint.resolve(opts.run))
train = split_dialogues(cfg, "train")
rows, names = [], {}   # (seen, {system: (five, first)}); the systems in the packs' order
for d in opts.dirs:
    key = read_key(f"{d}/key.json")
    names.update(dict.fromkeys(key["systems"]))
    refs = {json.dumps(r["context"]): r["reference"] for r in map(json.loads, open(f"{d}/contexts.jsonl"))}
    answers = [read_answers(f, key) for f in sorted(glob.glob(f"{d}/rater*.txt"))]
    shown = collections.defaultdict(lambda: collections.defaultdict(dict))   # context -> system -> rank -> kept
    for i, items in key["items"].items():
        kept = sum(a[i] == "good" for a in answers) / len(answers)
        for it in items:
            shown[it["context"]][it["system"]][it["rank"]] = kept
    contexts = [key["contexts"][c] for c in shown]
    seen = seen_in_training(train, [(c, refs[json.dumps(c)]) for c in contexts])
    for s, systems in zip(seen, shown.values()):
        rows.append((s, {name: (sum(r.values()) / len(r), r[1]) for name, r in systems.items()}))

for group, want in (("seen", True), ("unseen", False)):
    part = [r for s, r in rows if s == want]
    print(f"{group}: {len(part)} contexts")
    for n in names:
        if part:
            print(f"  {n}: five {100 * sum(r[n][0] for r in part) / len(part):.1f}%, "
                  f"first {100 * sum(r[n][1] for r in part) / len(part):.1f}%")
unseen = [r for s, r in rows if not s]
random.seed(0)
for n in names:
    if n in (opts.versus, "h"):
        continue
    for j, what in ((0, "five"), (1, "first")):
        diff = [r[n][j] - r[opts.versus][j] for r in unseen]
        boot = sorted(sum(random.choices(diff, k=len(diff))) / len(diff) for _ in range(4000))
        print(f"unseen {n} - {opts.versus}, {what}: {100 * sum(diff) / len(diff):+.1f} "
              f"[{100 * boot[100]:+.1f}, {100 * boot[3899]:+.1f}]")
