#!/usr/bin/env bash
# Install the benchmark's peers: `scripts/setup-peers.sh llama.cpp`, `scripts/setup-peers.sh st-onnx`
# or `scripts/setup-peers.sh all`. Idempotent: every step is skipped when its output is cached.
#
#   llama.cpp  llama-cpp-python built from its source distribution for this CPU (GGML_NATIVE; ~15 min
#              on 2 cores, once: the wheel is cached per CPU flag set), installed into the project's
#              venv; GGUF files F16 / Q8_0 / Q4_0 / Q4_K_M converted from the checkpoint with its
#              Dense heads by the converter shipped in that source distribution.
#   st-onnx    sentence-transformers' ONNX backend (optimum) in its own venv, and its fp32 and
#              dynamic int8 exports of the checkpoint.
#
# Environment: PYTHON (the project's venv python, default .venv/bin/python), CHECKPOINT (default
# ~/.cache/embeddinggemma-300m), PEERS_CACHE (default ~/.cache/embeddinggemma-peers),
# LLAMA_CPP_PYTHON_VERSION (default below).
set -euo pipefail
what="${1:-all}"
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
checkpoint="${CHECKPOINT:-$HOME/.cache/embeddinggemma-300m}"
cache="${PEERS_CACHE:-$HOME/.cache/embeddinggemma-peers}"
# 0.3.36 bundles a llama.cpp with the gemma-embedding architecture and the converter's Dense modules.
llama_version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
# The st-onnx venv's pins: optimum-onnx needs transformers < 4.58, sentence-transformers 6 needs >= 5;
# onnxruntime as in the project's venv, so both sides run the same kernels.
st_onnx_pins=("sentence-transformers==5.1.2" "transformers==4.57.1" "optimum==2.1.0"
              "optimum-onnx[onnxruntime]==0.1.0" "onnxruntime==1.32.0")

[ -x "$py" ] || { echo "error: no python at $py; run scripts/setup-venv.sh first or set PYTHON" >&2; exit 1; }
[ -f "$checkpoint/config.json" ] || { echo "error: no checkpoint at $checkpoint; set CHECKPOINT" >&2; exit 1; }
mkdir -p "$cache"

setup_llama() {
  # GGML_NATIVE compiles for this CPU's instruction set: a wheel is valid only on the same flags.
  local tag wheels sdist src arch="-DGGML_NATIVE=ON"
  tag="$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo | md5sum | cut -c1-10)"
  # On AMX CPUs its AMX buffer type crashed (general protection fault in libggml-cpu on the Q8_0
  # file; docs/notes/bench.md): build without AMX; the AVX-512 VNNI kernels and repacking stay.
  if grep -m1 -E '^flags' /proc/cpuinfo | grep -qw amx_int8; then
    # GGML_NATIVE would compile the AMX code back in (-march=native): name this CPU's other extensions instead
    arch="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_AVX_VNNI=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    tag="$tag-noamx"
  fi
  wheels="$cache/wheels/$tag"
  mkdir -p "$wheels" "$cache/sdist"
  if ! ls "$wheels"/llama_cpp_python-"$llama_version"-*.whl >/dev/null 2>&1; then
    sdist="$cache/sdist/llama_cpp_python-$llama_version.tar.gz"
    [ -f "$sdist" ] || "$py" -m pip download -q "llama-cpp-python==$llama_version" --no-binary :all: --no-deps -d "$cache/sdist"
    echo "building llama-cpp-python $llama_version for this CPU (~15 min on 2 cores) into $wheels"
    CMAKE_ARGS="$arch -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      nice "$py" -m pip wheel -q --no-deps "$sdist" -w "$wheels"
  fi
  # --force-reinstall: a wheel rebuilt at the same version must replace the installed one
  "$py" -m pip install -q --no-deps --force-reinstall "$(ls "$wheels"/llama_cpp_python-"$llama_version"-*.whl | head -1)"
  "$py" -m pip install -q "diskcache>=5.6.1" "jinja2>=2.11.3" "typing-extensions>=4.5.0"
  # The converter of the same llama.cpp release, from the cached source distribution.
  src="$cache/src/llama_cpp_python-$llama_version"
  if [ ! -f "$src/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
    sdist="$cache/sdist/llama_cpp_python-$llama_version.tar.gz"
    [ -f "$sdist" ] || "$py" -m pip download -q "llama-cpp-python==$llama_version" --no-binary :all: --no-deps -d "$cache/sdist"
    mkdir -p "$cache/src" && tar xzf "$sdist" -C "$cache/src"
  fi
  PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$py" -m benchmarks.peers gguf --checkpoint "$checkpoint" \
    --converter "$src/vendor/llama.cpp/convert_hf_to_gguf.py" --out "$cache/gguf"
}

setup_st_onnx() {
  local venv="$cache/venv-st-onnx"
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  if ! "$venv/bin/python" -c "import optimum.onnxruntime, sentence_transformers" 2>/dev/null; then
    "$venv/bin/python" -m pip install -q --upgrade pip
    # torch first and pinned: on these machines that spec is a local CPU build, a looser one pulls CUDA.
    "$venv/bin/python" -m pip install -q "torch==2.13.0"
    "$venv/bin/python" -m pip install -q "${st_onnx_pins[@]}"
  fi
  PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$venv/bin/python" -m benchmarks.peers st-onnx \
    --checkpoint "$checkpoint" --out "$cache/st-onnx"
}

case "$what" in
  llama.cpp) setup_llama ;;
  st-onnx) setup_st_onnx ;;
  all) setup_llama; setup_st_onnx ;;
  *) echo "error: unknown peer '$what'; choose llama.cpp, st-onnx or all" >&2; exit 2 ;;
esac
echo "peers ready under $cache"
