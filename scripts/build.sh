#!/usr/bin/env bash
# Set up .venv and build the artifacts: fp32 export, then the quantized variants when the quant
# stage is available.  Usage: scripts/build.sh [HUB_ID_OR_FOLDER] [OUT_DIR]
set -euo pipefail
model="${1:-google/embeddinggemma-300m}"
out="${2:-artifacts}"
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$(bash "$root/scripts/setup-venv.sh" export,quant | tail -n 1)"
"$venv/bin/embeddinggemma-export" --model "$model" --out "$out/fp32"
if "$venv/bin/python" -c "import quant.cli" 2>/dev/null; then
  "$venv/bin/embeddinggemma-quant" --in "$out/fp32" --variant all --method gptq --out "$out"
fi
ls -l "$out"
