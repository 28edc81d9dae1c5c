#!/usr/bin/env bash
# Set up .venv with the development extras and the web embedder's node modules, lint with ruff and
# run the tests. The real-model tier runs only when EMBEDDINGGEMMA_DIR points at the
# google/embeddinggemma-300m checkpoint; otherwise it is skipped with a loud banner. Extra arguments
# go to pytest.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$(bash "$root/scripts/setup-venv.sh" dev | tail -n 1)"
bash "$root/scripts/setup-web.sh"
cd "$root"
echo "ruff: lint (rules in pyproject.toml)"
"$venv/bin/ruff" check .
exec "$venv/bin/python" -m pytest -ra "$@"
