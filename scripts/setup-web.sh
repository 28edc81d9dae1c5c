#!/usr/bin/env bash
# Install what the web embedder's tests need: its node modules (npm ci from web/package-lock.json)
# and, with --browser, Debian's chromium for the headless browser tests (never a downloaded browser).
# Without node/npm it warns and exits 0: the web tests then skip with that reason.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
browser=0
[ "${1:-}" = "--browser" ] && browser=1

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "WARNING: node/npm not found; the web tests will be skipped (install Node.js >= 20)" >&2
  exit 0
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
  echo "WARNING: node $(node -v) is older than 20; the web tests will be skipped" >&2
  exit 0
fi
# onnxruntime-node is not used here; if a dependency ever pulls it in, it must not fetch CUDA binaries.
(cd "$root/web" && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error)

if [ "$browser" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's chromium for the headless browser tests" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
  else
    echo "WARNING: no /usr/bin/chromium and cannot apt-get it; the browser tests will be skipped" >&2
  fi
fi
