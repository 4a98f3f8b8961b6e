"""Systems r (the nearest neighbour's first five) and m (the model's five and the neighbour's ten,
ranked together by the model's default ranking) for a rating round.
    PYTHONPATH=$PWD .venv/bin/python eval/ratings/2026-12-01-nearest/systems.py RUN contexts.jsonl sys-n.jsonl sys-r.jsonl sys-m.jsonl
"""
import json, sys
from vhred import candidates, checkpoint, loading
from vhred.sources import split_dialogues
from vhred.candidates import reply_key
from vhred.render import pretty
from vhred.nearest import Index
from vhred.metrics import dialogwae
run, ctx_path, n_path, r_path, m_path = sys.argv[1:6]
model, cfg, sp = loading.load_model(checkpoint.resolve(run))
train = split_dialogues(cfg, "train")
index = Index(train, 0.5)
rows = [json.loads(l) for l in open(ctx_path)]
n_rows = [json.loads(l) for l in open(n_path)]
found = index.nearest([r["context"] for r in rows], 10)
seen = dialogwae.seen_in_training(train, [(r["context"], r["reference"]) for r in rows])
with open(r_path, "w") as fr, open(m_path, "w") as fm:
    for row, nrow, near, s in zip(rows, n_rows, found, seen):
        if nrow["context"] != row["context"]:
            raise SystemExit(f"{n_path} does not answer {ctx_path} line by line: make it from that file")
        near = [pretty(x) for x in near]
        fr.write(json.dumps({"context": row["context"], "samples": near[:5], "scores": [0.0] * len(near[:5]), "seen_in_training": s}) + "\n")
        pool = list(dict.fromkeys(nrow["samples"] + near))
        pool = list({reply_key(x): x for x in reversed(pool)}.values())[::-1]
        scores = candidates.score(model, sp, cfg, row["context"], pool)
        best = sorted(zip(scores, pool), key=lambda x: -x[0])[:5]
        fm.write(json.dumps({"context": row["context"], "samples": [x for _, x in best], "scores": [round(v, 4) for v, _ in best],
                             "from_training": [x in near and x not in nrow["samples"] for _, x in best], "seen_in_training": s}) + "\n")
print(f"{sum(seen)} of {len(rows)} contexts seen in training")
