#!/bin/bash
# The blind rating pack of docs/rating.md: bash eval/rating_pack.sh from the repository root (a vhred checkout at the
# commit that holds this file), with RUN the trained CPU-config VHRED run folder.
set -euo pipefail
if [ $# -gt 0 ]; then   # it takes no arguments: --help, or anything else, says so rather than run
    echo "usage: [RUN=run folder] [SYSTEM_C='generate flags of system c'] bash eval/rating_pack.sh  (writes ./rating/)"
    case "$1" in -h|--help) exit 0 ;; *) exit 2 ;; esac
fi
RUN=${RUN:-runs/dailydialog-cpu-vhred}
export DAILYDIALOG_SRC=${DAILYDIALOG_SRC:-../shared/data/dailydialog/ijcnlp_dailydialog.zip}
export OMP_NUM_THREADS=1
PY=".venv/bin/python"
BASE=rating/base-9fdc002       # vhred as at commit 9fdc002 (the former default decoding and text out)
mkdir -p "$BASE" rating
git archive 9fdc002 vhred | tar -x -C "$BASE"
# 40 fixed test-split contexts, none of the 200 the decoding and ranking were tuned on
PYTHONPATH=$PWD $PY -m eval.rating_contexts --checkpoint "$RUN" --contexts 40 --seed 1 > rating/contexts.jsonl
# (a) today's default at 9fdc002: greedy per z, 10 drawn, repeats dropped, ranked by PMI, best 5
PYTHONPATH=$BASE $PY -m vhred.generate --checkpoint "$RUN" --input rating/contexts.jsonl \
    --output rating/sys-a.jsonl --num-samples 5
# (b) the default of the first round (greedy per z, faulty last, MMI lambda 0.25, 2 draws per shown reply;
#     today's default draws 8, docs/rating.md)
PYTHONPATH=$PWD $PY -m vhred.generate --checkpoint "$RUN" --input rating/contexts.jsonl \
    --output rating/sys-b.jsonl --num-samples 5 --draws 2
# (c) nucleus sampling T 0.7, p 0.9 with the filter and ranking of (b), or $SYSTEM_C
PYTHONPATH=$PWD $PY -m vhred.generate --checkpoint "$RUN" --input rating/contexts.jsonl \
    --output rating/sys-c.jsonl --num-samples 5 --draws 2 ${SYSTEM_C:---method sample --temperature 0.7 --top-p 0.9}
PYTHONPATH=$PWD $PY -m vhred.rate pack --system a=rating/sys-a.jsonl --system b=rating/sys-b.jsonl \
    --system c=rating/sys-c.jsonl --out rating/pack.txt --key rating/key.json --per-context 5 \
    --checkpoint "$RUN" --seed 0
PYTHONPATH=$PWD $PY -m vhred.rate pack --system a=rating/sys-a.jsonl --system b=rating/sys-b.jsonl \
    --out rating/pairwise-pack.txt --key rating/pairwise-key.json --per-context 1 --pairwise \
    --checkpoint "$RUN" --seed 0
