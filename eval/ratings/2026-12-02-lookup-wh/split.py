"""The sixty-eighth round split by whether the training split holds the context's exchange (the same reply
after the same turn, sys-r.jsonl's seen_in_training): each system's good share of the five and of the first
reply (the mean of a context's readers), and r - n and f - n on the unseen contexts, bootstrapped over contexts.
    PYTHONPATH=$PWD python eval/ratings/2026-12-02-lookup-wh/split.py eval/ratings/2026-12-02-lookup-wh/p1 eval/ratings/2026-12-02-lookup-wh/p2
"""
import collections, glob, json, random, sys
from vhred.rate import read_answers, read_key

rows = []   # (seen, {system: (five, first)})
for d in sys.argv[1:]:
    key = read_key(f"{d}/key.json")
    seen = {json.dumps(r["context"]): r["seen_in_training"] for r in map(json.loads, open(f"{d}/sys-r.jsonl"))}
    answers = [read_answers(f, key) for f in sorted(glob.glob(f"{d}/rater*.txt"))]
    shown = collections.defaultdict(lambda: collections.defaultdict(dict))   # context -> system -> rank -> kept
    for i, items in key["items"].items():
        kept = sum(a[i] == "good" for a in answers) / len(answers)
        for it in items:
            shown[it["context"]][it["system"]][it["rank"]] = kept
    for c, systems in shown.items():
        rows.append((seen[json.dumps(key["contexts"][c])],
                     {s: (sum(r.values()) / len(r), r[1]) for s, r in systems.items()}))

for group, want in (("seen", True), ("unseen", False)):
    part = [r for s, r in rows if s == want]
    print(f"{group}: {len(part)} contexts")
    for s in ("n", "r", "f", "h"):
        print(f"  {s}: five {100 * sum(r[s][0] for r in part) / len(part):.1f}%, first {100 * sum(r[s][1] for r in part) / len(part):.1f}%")
unseen = [r for s, r in rows if not s]
random.seed(0)
for s in ("r", "f"):
    for j, what in ((0, "five"), (1, "first")):
        diff = [r[s][j] - r["n"][j] for r in unseen]
        boot = sorted(sum(random.choices(diff, k=len(diff))) / len(diff) for _ in range(4000))
        print(f"unseen {s} - n, {what}: {100 * sum(diff) / len(diff):+.1f} [{100 * boot[100]:+.1f}, {100 * boot[3899]:+.1f}]")
