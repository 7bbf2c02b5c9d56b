#!/usr/bin/env bash
# Run the routing exactness tests and the routing benchmark on CUDA, then the inference and
# cold-start benchmarks on SmolLM2-135M-Instruct; under 12 minutes on one GPU (an estimate: the
# inference steps have not run on a GPU yet).
#
# Usage: benchmarks/gpu_check.sh [OUTPUT_DIR]   (default: ./gpu-check)
#
# The tests build their libraries and models on $SEQR_GPU_CHECK_DEVICE (default cuda); the
# benchmarks write JSON and text reports to OUTPUT_DIR. SEQR_GPU_CHECK_INFERENCE_ARGS and
# SEQR_GPU_CHECK_COLD_START_ARGS replace the sizes of the inference and cold-start benchmarks.
# A dry run of every step on the CPU:
#   SEQR_GPU_CHECK_DEVICE=cpu SEQR_GPU_CHECK_BENCH_ARGS="--setting tiny --layer-setting tiny --layer-adapters 4" \
#   SEQR_GPU_CHECK_INFERENCE_ARGS="--adapters 2 --ranks 4 --peft-adapters 2 --generate-adapters 2 --batch 1 --tokens 8 --prompt-tokens 8 --new-tokens 2 --repeats 1" \
#   SEQR_GPU_CHECK_COLD_START_ARGS="--adapters 2" benchmarks/gpu_check.sh /tmp/gpu-check
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/gpu-check}"
python="${SEQR_PYTHON:-$root/.venv/bin/python}"
device="${SEQR_GPU_CHECK_DEVICE:-cuda}"
read -r -a bench_args <<<"${SEQR_GPU_CHECK_BENCH_ARGS:---repeats 10}"
read -r -a inference_args <<<"${SEQR_GPU_CHECK_INFERENCE_ARGS:---adapters 1,10,100,1000 --ranks 8,32 --peft-adapters 10,100 --repeats 5}"
read -r -a cold_start_args <<<"${SEQR_GPU_CHECK_COLD_START_ARGS:---adapters 100,1000}"
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

# Routed forward and generation against the base model and PEFT, then the cold start. A failure
# or timeout is reported at the end; the logs in OUTPUT_DIR show which step stopped.
inference_status=0
timeout 300 "$python" benchmarks/bench_inference.py --device "$device" "${inference_args[@]}" \
    --json "$out/bench_inference.json" >"$out/bench_inference.log" 2>&1 || inference_status=$?
timeout 240 "$python" benchmarks/bench_cold_start.py --device "$device" "${cold_start_args[@]}" \
    --json "$out/bench_cold_start.json" >"$out/bench_cold_start.log" 2>&1 || inference_status=$?
[[ "$inference_status" -eq 0 ]] && "$python" - "$out/bench_inference.json" "$out/bench_cold_start.json" <<'PY' | tee "$out/bench_inference.txt"
import json
import sys

with open(sys.argv[1], encoding="utf-8") as handle:
    inference = json.load(handle)
with open(sys.argv[2], encoding="utf-8") as handle:
    cold = json.load(handle)
print(inference["machine"])
for row in inference["forward"] + inference.get("peft", []):
    print(f"forward {row['name']:<17} N={row['adapters']:<5} r={row['rank']:<3} {row['seconds'] * 1e3:9.2f} ms "
          f"base {row['base_seconds'] * 1e3:9.2f} ms ratio {row['ratio']:6.3f}")
if "generation" in inference:
    generation = inference["generation"]
    print(f"generation N={generation['adapters']}: {generation['seqr_tokens_per_second']:.1f} tokens/s, "
          f"base {generation['base_tokens_per_second']:.1f}, ratio {generation['throughput_ratio']:.3f}")
for row in cold["results"]:
    steps = ", ".join(f"{step} {row['cold'][step + '_seconds'] * 1e3:.1f} ms"
                      for step in ("resolve", "decrypt", "transfer", "attach", "first_forward"))
    print(f"cold start N={row['adapters']}: {steps}; {row['device_bytes_per_adapter'] / 2**20:.2f} MiB on the "
          f"device per adapter of {row['adapter_qr_bytes'] / 2**20:.2f} MiB")
PY

if [[ "$inference_status" -ne 0 ]]; then
    echo "an inference benchmark failed or timed out on $device (exit status $inference_status); see $out/*.log" >&2
fi
if [[ "$tests_status" -ne 0 ]]; then
    echo "routing tests failed on $device (exit status $tests_status); see $out/exactness.txt" >&2
    exit "$tests_status"
fi
exit "$inference_status"
