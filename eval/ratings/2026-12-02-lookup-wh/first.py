"""System f for the sixty-eighth round: the lookup's first reply (sys-r) shown first, then the default's
(sys-n) first four that differ from it.
    python eval/ratings/2026-12-02-lookup-wh/first.py sys-n.jsonl sys-r.jsonl sys-f.jsonl
"""
import json, sys
from vhred.candidates import reply_key
n_path, r_path, f_path = sys.argv[1:4]
with open(f_path, "w") as out:
    for n, r in zip(map(json.loads, open(n_path)), map(json.loads, open(r_path))):
        if n["context"] != r["context"]:
            raise SystemExit(f"{n_path} and {r_path} do not answer the same contexts line by line")
        first = r["samples"][0]
        rest = [x for x in n["samples"] if reply_key(x) != reply_key(first)][:4]
        out.write(json.dumps({"context": n["context"], "samples": [first] + rest, "scores": [0.0] * (1 + len(rest))}) + "\n")
