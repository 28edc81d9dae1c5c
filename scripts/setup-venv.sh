#!/usr/bin/env bash
# Create (or reuse) .venv and install the project with the given extras, e.g. "export,quant".
# torch is pinned to 2.13.0 first: on these machines that spec resolves to a local CPU build,
# while any looser spec would pull several GB of CUDA packages.
set -euo pipefail
extras="${1:-export,quant}"
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV:-$root/.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "torch==2.13.0"
"$venv/bin/python" -m pip install -q -e "$root[$extras]"
echo "$venv"
