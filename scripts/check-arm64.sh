#!/usr/bin/env bash
# Run every artifact in ARTIFACTS_DIR on emulated arm64 CPUs (qemu-user, an arm64 Debian root with
# the registry's aarch64 wheels) and print how close its vectors are to the same artifacts on this
# x86 host. Sets up the arm64 root first (scripts/setup-arm64.sh; ~1 s once it exists).
#   scripts/check-arm64.sh ARTIFACTS_DIR [--cpu max|armv8.0|both] [--texts N] [--only q4_0,...] [--json FILE [--force]]
# The host side runs with PYTHON (default: .venv/bin/python of this checkout, else python3), which
# needs the runtime's packages (scripts/setup-venv.sh). Exit code 1 when a row misses its target.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
PYTHON="$python" bash "$root/scripts/setup-arm64.sh" >/dev/null
cd "$root"
exec "$python" -m scripts.arm64.check "$@"
