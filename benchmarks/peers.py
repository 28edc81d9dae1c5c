"""The benchmark's peers, what a reader would pick instead of our variants; each one optional.

- ``llama.cpp``: llama-cpp-python on GGUF files converted from the same checkpoint with its Dense
  heads (F16, Q8_0, Q4_0, Q4_K_M), in the project's venv.
- ``st-onnx``: sentence-transformers' ONNX backend (exported through optimum) at fp32 and with its
  dynamic int8 quantization, in its own venv (optimum needs an older transformers).

``scripts/setup-peers.sh`` installs both; it calls ``python -m benchmarks.peers gguf`` and
``python -m benchmarks.peers st-onnx`` for the conversions.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

#: llama.cpp's file types (llama_ftype) for the GGUF variants measured.
LLAMA_VARIANTS = {"F16": 1, "Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15}
ST_ONNX_VARIANTS = ("fp32", "int8")
PEERS = {"llama.cpp": tuple(LLAMA_VARIANTS), "st-onnx": ST_ONNX_VARIANTS}
SETUP = {
    "llama.cpp": "run `scripts/setup-peers.sh llama.cpp` (builds llama-cpp-python for this CPU, ~15 min on 2 cores "
                 "once, and converts the GGUF files)",
    "st-onnx": "run `scripts/setup-peers.sh st-onnx` (a venv with optimum, and the fp32 and int8 exports)",
}
GGUF_STEM = "embeddinggemma-300m"


def cache_dir() -> Path:
    """Where the peers' builds, venv and converted models live (PEERS_CACHE overrides)."""
    return Path(os.environ.get("PEERS_CACHE") or "~/.cache/embeddinggemma-peers").expanduser()


def parse_peers(items: list[str]) -> dict[str, list[str]]:
    """``["llama.cpp:Q4_0,Q8_0", "st-onnx"]`` -> ``{peer: [variants]}``; no items or "all" means every peer."""
    if not items or items == ["all"]:
        return {p: list(v) for p, v in PEERS.items()}
    out: dict[str, list[str]] = {}
    for item in items:
        peer, _, variants = item.partition(":")
        if peer not in PEERS:
            raise ValueError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)} (optionally PEER:VARIANT,...)")
        known = {v.lower(): v for v in PEERS[peer]}
        chosen = []
        for v in filter(None, (x.strip() for x in variants.split(","))):
            if v.lower() not in known:
                raise ValueError(f"unknown {peer} variant {v!r}; choose from {', '.join(PEERS[peer])}")
            chosen.append(known[v.lower()])
        out.setdefault(peer, []).extend(chosen or PEERS[peer])
    return out


def int8_config(flags: set[str]) -> str:
    """sentence-transformers' dynamic-quantization configuration for a CPU: the one its docs pair with it."""
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "arm64"


def st_onnx_python(cache: Path) -> Path:
    """The st-onnx venv's interpreter."""
    return cache / "venv-st-onnx" / "bin" / "python"


def gguf_path(cache: Path, variant: str) -> Path:
    """Where ``scripts/setup-peers.sh`` puts the GGUF file of ``variant``."""
    return cache / "gguf" / f"{GGUF_STEM}-{variant}.gguf"


def _folder_mb(folder: Path, skip=lambda p: False) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not skip(p)) / 1e6


def missing(peer: str, cache: Path) -> str | None:
    """Why ``peer`` cannot run at all (a line naming the fix), or None when it is installed."""
    if peer == "llama.cpp" and importlib.util.find_spec("llama_cpp") is None:
        return f"skipping llama.cpp: llama-cpp-python is not installed in {sys.executable}; {SETUP[peer]}"
    if peer == "st-onnx" and not st_onnx_python(cache).is_file():
        return f"skipping st-onnx: no venv at {st_onnx_python(cache).parent.parent}; {SETUP[peer]}"
    return None


def find(peer: str, variant: str, cache: Path, flags: set[str]) -> dict | str:
    """The benchmark system for one variant of an installed peer, or why it is missing (a line naming the fix)."""
    name = f"{peer} {variant}"
    if peer == "llama.cpp":
        path = gguf_path(cache, variant)
        if not path.is_file():
            return f"skipping {name}: no {path}; {SETUP[peer]}"
        return {"name": name, "system": "llama.cpp", "path": str(path), "size_mb": path.stat().st_size / 1e6,
                "variant": variant, "accuracy_level": "–"}
    python, folder = st_onnx_python(cache), cache / "st-onnx"
    onnx_file = "onnx/model.onnx" if variant == "fp32" else f"onnx/model_qint8_{int8_config(flags)}.onnx"
    if not (folder / onnx_file).is_file():
        return f"skipping {name}: no {folder / onnx_file}; {SETUP[peer]}"
    # the shipped folder holds one model file (+ its external data), the tokenizer and the Dense heads
    other = lambda p: p.parent.name == "onnx" and not p.name.startswith(Path(onnx_file).name)  # noqa: E731
    return {"name": name, "system": "st-onnx", "path": str(folder), "size_mb": _folder_mb(folder, other),
            "variant": variant, "accuracy_level": "–", "python": str(python), "options": {"file_name": onnx_file}}


def peer_systems(requested: dict[str, list[str]], cache: Path | None = None,
                 flags: set[str] | None = None) -> tuple[list[dict], list[str]]:
    """(systems found, one skip line per missing peer variant)."""
    from runtime.cpu import cpu_flags

    cache = cache or cache_dir()
    flags = cpu_flags() if flags is None else flags
    systems, skips = [], []
    for peer, variants in requested.items():
        reason = missing(peer, cache)
        if reason:
            skips.append(reason)
            continue
        for v in variants:
            found = find(peer, v, cache, flags)
            (systems if isinstance(found, dict) else skips).append(found)
    return systems, skips


def fidelity(systems: list[dict], fp32_dir: str, texts: list[str], threads: int,
             prompts: tuple[str, ...] = ("document", "query")) -> dict:
    """Cosine of each peer's vectors to the fp32 artifact's on ``texts`` with each prompt, in the format
    of ``python -m quant.fidelity --json`` (``{name: {variant, prompts: {prompt: {mean, min}}}}``)."""
    import numpy as np

    from benchmarks.process import call_worker
    from runtime.compare import embed_texts
    from runtime.embedder import Embedder
    from runtime.vectors import row_cosines

    ref = embed_texts(fp32_dir, texts, prompts, threads=threads, normalize=False)
    emb = Embedder(fp32_dir, verify=False, threads=1)
    prompted = [t for p in prompts for t in emb.prompted(texts, p)]   # the exact strings our model reads
    out = {}
    for s in systems:
        got = np.asarray(call_worker(s, {"mode": "embed", "texts": prompted, "batch_size": 8}, threads)["vectors"],
                         dtype=np.float32)
        per = {}
        for i, p in enumerate(prompts):
            c = row_cosines(ref[p], got[i * len(texts):(i + 1) * len(texts)])
            per[p] = {"mean": float(c.mean()), "min": float(c.min()), "worst_text": int(c.argmin())}
        out[s["name"]] = {"variant": s["name"], "prompts": per}
    return out


# ---- setup steps, run by scripts/setup-peers.sh ----

def convert_gguf(checkpoint: Path, converter: Path, out: Path, variants=tuple(LLAMA_VARIANTS)) -> dict[str, Path]:
    """F16 GGUF with the Dense heads from ``checkpoint`` by llama.cpp's own converter, then the
    quantized files by llama.cpp's quantizer (its default tensor choices, as llama-quantize)."""
    import llama_cpp

    out.mkdir(parents=True, exist_ok=True)
    f16 = out / f"{GGUF_STEM}-F16.gguf"
    if not f16.is_file():
        cmd = [sys.executable, str(converter), str(checkpoint), "--outtype", "f16", "--outfile", str(f16),
               "--sentence-transformers-dense-modules"]
        subprocess.run(cmd, check=True)
    paths = {"F16": f16}
    for v in variants:
        if v == "F16":
            continue
        path = f16.with_name(f"{GGUF_STEM}-{v}.gguf")
        if not path.is_file():
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = LLAMA_VARIANTS[v]
            params.nthread = os.cpu_count() or 1
            if llama_cpp.llama_model_quantize(str(f16).encode(), str(path).encode(), params) != 0:
                raise RuntimeError(f"llama.cpp could not quantize {f16} to {v}; see its log above")
        paths[v] = path
    return paths


def check_gguf(path: Path, checkpoint: Path, min_cosine: float = 0.999) -> float:
    """Check that llama.cpp pools and normalises as sentence-transformers does: mean pooling read from
    the file, and the F16 file's vectors within ``min_cosine`` of sentence-transformers' on a few texts."""
    import numpy as np
    from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama
    from sentence_transformers import SentenceTransformer

    from runtime.vectors import row_cosines

    texts = ["task: search result | query: how do embeddings work?",
             "title: none | text: The quick brown fox jumps over the lazy dog near the river bank.",
             "Ein kurzer deutscher Satz über das Wetter in Berlin.", "def add(a, b):\n    return a + b"]
    model = Llama(model_path=str(path), embedding=True, n_ctx=2048, n_batch=2048, n_ubatch=2048, flash_attn=True,
                  verbose=False)   # as benchmarks.worker loads it
    if model.pooling_type() != LLAMA_POOLING_TYPE_MEAN:
        raise SystemExit(f"error: {path} pools with type {model.pooling_type()}, not mean as sentence-transformers; "
                         "reconvert it with the converter of the same llama.cpp release")
    got = np.asarray(model.embed(texts, normalize=True), dtype=np.float32)
    ref = SentenceTransformer(str(checkpoint), device="cpu").encode(texts)
    if not np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-4):
        raise SystemExit(f"error: {path}: llama.cpp's normalised vectors are not unit length")
    worst = float(row_cosines(ref, got).min())
    if worst < min_cosine:
        raise SystemExit(f"error: {path}: cosine to sentence-transformers {worst:.5f} < {min_cosine}; the Dense heads "
                         "or the pooling differ: convert with --sentence-transformers-dense-modules")
    return worst


def export_st_onnx(checkpoint: Path, out: Path, config: str) -> Path:
    """sentence-transformers' ONNX export (through optimum) and its dynamic int8 quantization."""
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    if not (out / "onnx" / "model.onnx").is_file():
        model = SentenceTransformer(str(checkpoint), backend="onnx", device="cpu")
        model.save_pretrained(str(out))
    if not (out / "onnx" / f"model_qint8_{config}.onnx").is_file():
        model = SentenceTransformer(str(out), backend="onnx", device="cpu")
        export_dynamic_quantized_onnx_model(model, config, str(out))
    return out


def main(argv=None) -> int:
    """``gguf``: convert and check the GGUF files; ``st-onnx``: export sentence-transformers' ONNX models."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=main.__doc__)
    parser.add_argument("step", choices=("gguf", "st-onnx"))
    parser.add_argument("--checkpoint", required=True, type=Path, help="the sentence-transformers checkpoint folder")
    parser.add_argument("--converter", type=Path, help="llama.cpp's convert_hf_to_gguf.py (gguf step)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    if args.step == "gguf":
        if not args.converter or not args.converter.is_file():
            parser.error("gguf needs --converter: convert_hf_to_gguf.py from llama-cpp-python's source distribution "
                         "(vendor/llama.cpp/), as scripts/setup-peers.sh passes it")
        paths = convert_gguf(args.checkpoint, args.converter, args.out)
        worst = check_gguf(paths["F16"], args.checkpoint)
        print(json.dumps({"files": {k: str(v) for k, v in paths.items()}, "f16_min_cosine_to_st": worst}))
    else:
        from runtime.cpu import cpu_flags

        print(export_st_onnx(args.checkpoint, args.out, int8_config(cpu_flags())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
