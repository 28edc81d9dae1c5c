#!/usr/bin/env bash
# Build (or reuse) the arm64 Linux userland that scripts/check-arm64.sh runs the runtime in, under
# qemu-user emulation on an x86-64 Debian/Ubuntu host. Prints the root's path on its last line.
#
#   1. host packages: qemu-user-static (qemu-aarch64-static) and debootstrap, via apt-get
#   2. a minimal Debian bookworm arm64 root with python3 (3.11): `debootstrap --foreign` downloads
#      and unpacks it; the packages it leaves for the second stage are unpacked with dpkg-deb, so no
#      binfmt_misc registration or chroot is needed (nothing is configured; python3 needs nothing)
#   3. the registry's aarch64 wheels of onnxruntime, tokenizers, numpy and sentencepiece, installed
#      from this host with pip --platform into ROOT/opt/embeddinggemma/site-packages, at the versions
#      the host's Python has (so arm64 and x86 run the same onnxruntime)
#
# Idempotent: each step leaves a stamp in ROOT/.setup/ and is skipped next time (~1 s).
# Environment: EMBEDDINGGEMMA_ARM64_ROOT (default ~/.cache/embeddinggemma-arm64-root; keep it out of
# the git tree), DEBIAN_MIRROR (default: debootstrap's), PYTHON (host interpreter whose pip and
# package versions are used; default .venv/bin/python of this checkout, else python3),
# ONNXRUNTIME_VERSION / TOKENIZERS_VERSION / NUMPY_VERSION / SENTENCEPIECE_VERSION to override.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
root="${EMBEDDINGGEMMA_ARM64_ROOT:-$HOME/.cache/embeddinggemma-arm64-root}"
suite=bookworm
site_rel=opt/embeddinggemma/site-packages
say() { echo "setup-arm64: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

case "$root" in "$here"|"$here"/*) die "EMBEDDINGGEMMA_ARM64_ROOT=$root is inside the git checkout; choose a cache folder outside it";; esac
[ "$(uname -m)" = x86_64 ] || say "note: this host is $(uname -m), not x86_64; the scripts were written for x86-64 hosts"

# 1. host packages ------------------------------------------------------------------------------
need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get; install them with your package manager"
  [ "$(id -u)" = 0 ] || die "installing ${need[*]} needs root: sudo apt-get install ${need[*]}"
  say "installing ${need[*]} (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# 2. the arm64 root ------------------------------------------------------------------------------
mkdir -p "$root/.setup"
if [ ! -f "$root/.setup/debootstrap.done" ]; then
  [ "$(id -u)" = 0 ] || die "debootstrap needs root (it creates device nodes and root-owned files)"
  say "debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 $suite -> $root (~30 s)"
  t0=$SECONDS
  # A half-made root from an interrupted run is started afresh.
  find "$root" -mindepth 1 -maxdepth 1 ! -name .setup -exec rm -rf {} +
  debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 "$suite" "$root" ${DEBIAN_MIRROR:-} \
    > "$root/.setup/debootstrap.log" 2>&1 || die "debootstrap failed; see $root/.setup/debootstrap.log"
  # The first stage unpacks only the 'required' set; unpack the rest (python3 among them) the way
  # the second stage would, minus the maintainer scripts that would need an arm64 CPU to run.
  for deb in "$root"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$root"; done
  [ -x "$root/usr/bin/python3" ] || die "no usr/bin/python3 in $root after unpacking; see $root/.setup/debootstrap.log"
  rm -f "$root"/var/cache/apt/archives/*.deb
  touch "$root/.setup/debootstrap.done"
  say "root ready in $((SECONDS - t0)) s"
fi
guest_py=$("$root/usr/bin/python3" --version 2>/dev/null || qemu-aarch64-static -L "$root" "$root/usr/bin/python3" --version) \
  || die "the arm64 python3 in $root does not start under qemu-aarch64-static; remove $root and run again"
pyver=$(echo "$guest_py" | sed -E 's/^Python ([0-9]+)\.([0-9]+).*/\1\2/')

# 3. aarch64 wheels -------------------------------------------------------------------------------
host_python="${PYTHON:-}"
if [ -z "$host_python" ]; then
  if [ -x "$here/.venv/bin/python" ]; then host_python="$here/.venv/bin/python"; else host_python=python3; fi
fi
host_version() {  # the host's installed version of a distribution, or the given fallback
  "$host_python" -c "import importlib.metadata as m
try: print(m.version('$1'))
except m.PackageNotFoundError: print('$2')" 2>/dev/null || echo "$2"
}
ort="${ONNXRUNTIME_VERSION:-$(host_version onnxruntime 1.32.0)}"
tok="${TOKENIZERS_VERSION:-$(host_version tokenizers 0.23.3)}"
npy="${NUMPY_VERSION:-$(host_version numpy 2.4.6)}"
spm="${SENTENCEPIECE_VERSION:-$(host_version sentencepiece 0.2.3)}"
want="onnxruntime==$ort tokenizers==$tok numpy==$npy sentencepiece==$spm"
stamp="$root/.setup/wheels.done"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "cp$pyver $want" ]; then
  "$host_python" -m pip --version >/dev/null 2>&1 \
    || die "$host_python has no pip; run scripts/setup-venv.sh first or set PYTHON to an interpreter with pip"
  say "installing aarch64 wheels for cp$pyver: $want"
  rm -rf "${root:?}/$site_rel"
  # pip takes --platform tags literally: list every manylinux tag a glibc-2.36 system accepts that
  # these projects publish (numpy and onnxruntime ship manylinux_2_27/2_28, others 2014 = 2_17).
  plats=()
  for t in manylinux_2_36 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_24 manylinux_2_17 manylinux2014; do
    plats+=(--platform "${t}_aarch64")
  done
  # shellcheck disable=SC2086
  "$host_python" -m pip install -q --disable-pip-version-check --target "$root/$site_rel" "${plats[@]}" \
    --only-binary=:all: --implementation cp --python-version "$pyver" --abi "cp$pyver" $want \
    || die "pip could not install aarch64 wheels of: $want (is PyPI reachable? does each version publish an aarch64 cp$pyver wheel?)"
  echo "cp$pyver $want" > "$stamp"
fi
say "ready: $guest_py, $(cat "$stamp")"
echo "$root"
