#!/usr/bin/env bash
# Routing accuracy against training examples per task, and against rank, with
# benchmarks/eval_routing_probe.py on four tasks (20 test prompts each).
# Usage: benchmarks/eval_routing_curve.sh DATASETS_DIR OUTPUT_DIR
# Runs with one thread per process: on a shared 2-core machine, two OpenMP threads
# competing with other processes made a forward pass about 20x slower.
set -euo pipefail
datasets="$1"
out="$2"
mkdir -p "$out"
export OMP_NUM_THREADS=1
probe=(python benchmarks/eval_routing_probe.py --dataset cola --dataset qnli --dataset rte --dataset sst2
       --datasets-dir "$datasets" --test-examples 20 --adapters-dir "$out/adapters")
for train in 16 32 64; do
    "${probe[@]}" --train-examples "$train" --json "$out/probe_train${train}_rank8.json"
done
"${probe[@]}" --train-examples 64 --rank 32 --json "$out/probe_train64_rank32.json"
"${probe[@]}" --train-examples 128 --json "$out/probe_train128_rank8.json"
