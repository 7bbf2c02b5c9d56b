#!/usr/bin/env bash
# Run the routing exactness tests and the routing benchmark on CUDA; under 5 minutes on one GPU.
#
# Usage: benchmarks/gpu_check.sh [OUTPUT_DIR]   (default: ./gpu-check)
#
# The tests build their libraries and models on $SEQR_GPU_CHECK_DEVICE (default cuda); the
# benchmark writes JSON and text reports to OUTPUT_DIR. A dry run of every step on the CPU:
#   SEQR_GPU_CHECK_DEVICE=cpu SEQR_GPU_CHECK_BENCH_ARGS="--setting tiny --layer-setting tiny --layer-adapters 4" \
#       benchmarks/gpu_check.sh /tmp/gpu-check
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/gpu-check}"
python="${SEQR_PYTHON:-$root/.venv/bin/python}"
device="${SEQR_GPU_CHECK_DEVICE:-cuda}"
read -r -a bench_args <<<"${SEQR_GPU_CHECK_BENCH_ARGS:---repeats 10}"
mkdir -p "$out"

if [[ "$device" == cuda* ]]; then
    "$python" -c 'import sys, torch; torch.cuda.is_available() or sys.exit("CUDA is not available to torch " + torch.__version__); print("GPU:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
fi

cd "$root"
# A test failure is reported at the end, after the benchmark has also run.
tests_status=0
SEQR_ROUTING_DEVICE="$device" timeout 150 "$python" -m pytest -q -p no:cacheprovider \
    tests/routing/test_exactness.py tests/routing/test_known_answer.py tests/routing/test_update.py \
    tests/routing/test_device.py 2>&1 | tee "$out/exactness.txt" || tests_status=$?

timeout 150 "$python" benchmarks/bench_routing.py --device "$device" "${bench_args[@]}" --json >"$out/bench_routing.json"
"$python" - "$out/bench_routing.json" <<'PY' | tee "$out/bench_routing.txt"
import json
import sys

with open(sys.argv[1], encoding="utf-8") as handle:
    report = json.load(handle)
print(report["machine"])
for name, result in report["selection"].items():
    print(
        f"{name}: matmul {result['matmul_gflops']:.1f} GFLOP/s, floor {result['floor_us_per_token']:.4f} us/token, "
        f"SEQR at {result['seqr_over_floor']:.2f}x the floor"
    )
    for method, timing in result["methods"].items():
        print(f"  {method:<7} {timing['us_per_token']:10.4f} us/token {timing['ratio_to_seqr']:8.1f}x SEQR's time")
for row in report["layer"]["results"]:
    print(f"  layer {row['implementation']:<20} N={row['n_adapters']:<5} {row['ms_per_forward']:.3f} ms {row['peak_memory_mib']:.1f} MiB")
PY

if [[ "$tests_status" -ne 0 ]]; then
    echo "routing tests failed on $device (exit status $tests_status); see $out/exactness.txt" >&2
    exit "$tests_status"
fi
