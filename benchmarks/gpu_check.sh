#!/usr/bin/env bash
# Run the routing exactness tests and the routing benchmark on CUDA; under 5 minutes on one GPU.
#
# Usage: benchmarks/gpu_check.sh [OUTPUT_DIR]   (default: ./gpu-check)
# SEQR_ROUTING_DEVICE=cuda makes the routing tests build their libraries on the GPU; the benchmark
# writes its JSON and text reports to OUTPUT_DIR. On a machine without CUDA the script stops.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/gpu-check}"
python="${SEQR_PYTHON:-$root/.venv/bin/python}"
mkdir -p "$out"

"$python" - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("CUDA is not available: torch " + torch.__version__ + " sees no GPU")
print("GPU:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PY

cd "$root"
SEQR_ROUTING_DEVICE=cuda timeout 150 "$python" -m pytest -q tests/routing/test_exactness.py \
    tests/routing/test_known_answer.py tests/routing/test_update.py 2>&1 | tee "$out/exactness.txt"
timeout 120 "$python" benchmarks/bench_routing.py --device cuda --repeats 10 --json >"$out/bench_routing.json"
"$python" - "$out/bench_routing.json" <<'PY' | tee "$out/bench_routing.txt"
import json, sys
report = json.load(open(sys.argv[1]))
print(report["machine"])
for name, result in report["selection"].items():
    print(name, "floor us/token", round(result["floor_us_per_token"], 4), "SEQR/floor", round(result["seqr_over_floor"], 2))
    for method, timing in result["methods"].items():
        print(f"  {method:<7} {timing['us_per_token']:10.4f} us/token  {timing['ratio_to_seqr']:8.1f}x SEQR")
for row in report["layer"]["results"]:
    print(f"  layer {row['implementation']:<20} N={row['n_adapters']:<5} {row['ms_per_forward']:.3f} ms {row['peak_memory_mib']:.1f} MiB")
PY
