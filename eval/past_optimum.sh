#!/bin/bash
# Long training on the GPU: runs side by side in chunks of epochs (each resumes last.pt),
# every chunk's last.pt evaluated under DialogWAE's protocol while training goes on.
# usage: bash eval/past_optimum.sh OUT TRAIN_DEADLINE_S HARD_DEADLINE_S CONFIG
# (RUNS= and DATA= name the runs and data folders; EPS_VHRED= and EPS_WAE= the epochs each chunk
# ends at, "" for none; a chunk starts only when it and its evaluation should end before HARD_DEADLINE_S.)
# Made for a device machine lent for minutes: docs/models-compare-gpu.md, "Trained on past the early stop".
set -u
OUTD=$(realpath -m "$1"); TD=$2; HD=$3; CFG=$4   # OUT absolute: the end cds into the runs
PY=${PY:-python3}; EVAL_ARGS=${EVAL_ARGS:-}; EVAL_EST=${EVAL_EST:-100}
start=$(date +%s)
el() { echo $(( $(date +%s) - start )); }
left() { echo $(( HD - $(el) )); }
R=${RUNS:-runs/past-optimum}; D=${DATA:-data}; mkdir -p $R $OUTD
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; $PY -c "import torch, pyarrow, datasets; print(torch.__version__, pyarrow.__version__, datasets.__version__)"; nproc; } > $OUTD/machine.txt 2>&1
echo "prepare at $(el)s"
$PY -c "from vhred import config, dataset; dataset.prepare(config.load('$CFG', ['data_dir=$D']))" > $R/prepare.log 2>&1 || { cat $R/prepare.log; exit 1; }
echo "prepared at $(el)s"
ev() {   # name tag checkpoint
  local t1=$(el)
  timeout $(left) $PY -m vhred eval --checkpoint $3 --protocol dialogwae --iw-samples 0 \
      --num-samples 10 --no-dedup --rank none --tag $2 $EVAL_ARGS > $R/$1-eval-$2.log 2>&1
  echo "$1: eval $2 rc $? at $(el)s ($(( $(el) - t1 ))s)"
}
done_epochs() {   # name: the epochs its run has completed (0 before any)
  $PY -c "import json, sys; print(max([json.loads(l)['epoch'] for l in open(sys.argv[1]) if '\"val\"' in l] or [0]))" \
      $R/$1/metrics.jsonl 2>/dev/null || echo 0
}
chain() {   # name "epochs ..." overrides...: a chunk starts only if it and its eval should end in time
  local name=$1 eps=$2; shift 2
  local prev=$(done_epochs $name) rate=0   # a run resumed: its first chunk trains from there
  for e in $eps; do
    [ $prev -ge $e ] && { echo "$name: epoch $e done before"; continue; }   # never a later state as e$e.pt
    [ $(el) -ge $TD ] && { echo "$name: train deadline before epoch $e"; break; }
    [ $rate -gt 0 ] && [ $(( rate * (e - prev) + EVAL_EST )) -gt $(left) ] && { echo "$name: no time for epoch $e"; break; }
    local t0=$(el)
    timeout $(left) $PY -m vhred train --config $CFG out_dir=$R data_dir=$D name=$name epochs=$e patience=0 "$@" >> $R/$name.log 2>&1
    local rc=$?
    [ $rc -ne 0 ] && { echo "$name: chunk to epoch $e rc $rc at $(el)s"; break; }
    cp $R/$name/last.pt $R/$name/e$e.pt
    rate=$(( ($(el) - t0) / (e - prev) + 1 )); prev=$e
    echo "$name: epoch $e done at $(el)s ($rate s an epoch)"
    ev $name e$e $R/$name/e$e.pt &
  done
  [ $prev -gt 0 ] && [ $(left) -gt $EVAL_EST ] && ev $name best $R/$name/best.pt &
  wait
}
chain vhred-long "${EPS_VHRED-5 10 15 20 25 30 35 40 45 50}" &
chain dialogwae-gmp-long "${EPS_WAE-3 6 9 12 15 18 21 24 27 30}" model=dialogwae gmp_components=3 &
chain dialogwae-long "${EPS_WAE-3 6 9 12 15 18 21 24 27 30}" model=dialogwae &
wait
echo "all done at $(el)s"
cd $R && tar czf $OUTD/results.tar.gz *.log */metrics.jsonl */results-* */samples-* */train.log 2>/dev/null
ls -la $OUTD
