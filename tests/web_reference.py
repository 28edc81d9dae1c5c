"""Reference vectors from the Python runtime for the web embedder's parity tests (web/test/ and
web/browser-test/): the same texts and options, run through ``runtime.Embedder``, written as JSON
the JavaScript tests read. Option names are the JavaScript ones (``promptName``, ``titles``...).

onnxruntime-web's wasm MatMulNBits has no int8-activation kernel: it runs ``accuracy_level`` 4
(activations rounded to int8 blocks on native CPUs) exactly like level 0 (float32 activations). For
such artifacts the reference holds two comparisons: against the Python runtime on the artifact as
shipped (cosine floor ``LEVEL4_MIN_COSINE``: the native int8 rounding is the whole difference), and
against the Python runtime on the same weights at level 0 (``MIN_COSINE``: the same arithmetic).
Integer-path artifacts (w8a8: activations rounded to int8 codes per token before every integer
matmul) get ``ACTIVATION_CODES_MIN_COSINE``: wasm's float32 kernels differ from native AVX-512 ones
in the last bits, and an activation sitting on a rounding boundary then gets the neighbouring code;
on the real w8a8 the two runtimes land 0.9996-0.9999 apart while each is equally close to fp32
(docs/notes/web.md).

Usage as a script: ``python tests/web_reference.py OUT.json NAME=ARTIFACT_DIR [NAME=DIR ...]``.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runtime import Embedder  # noqa: E402
from runtime.batching import length_batches  # noqa: E402
from runtime.artifact import MANIFEST_NAME, sha256_file  # noqa: E402
from runtime.embedder import TruncationWarning  # noqa: E402

#: Per-text cosine the web embedder must reach against the Python runtime doing the same arithmetic.
MIN_COSINE = 0.9999
#: ... and against the Python runtime on an artifact whose MatMulNBits run at accuracy_level 4 natively
#: (measured on the tiny model: min 0.99955; the real q8_0/q4_0 are in docs/notes/web.md).
LEVEL4_MIN_COSINE = 0.999
#: ... and on an integer-path artifact (int8 activation codes), where both runtimes do the same integer
#: arithmetic on codes that flip at rounding boundaries (measured on the real w8a8: min 0.99955, a
#: Chinese text at dim 128; 0.99965 at 768). Q8_0's own fidelity floor, so no variant is held to less.
ACTIVATION_CODES_MIN_COSINE = 0.999

TEXTS = [
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
    "Which planet is known as the Red Planet?",
    "def encode(texts): return [t.lower() for t in texts]",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "Emoji 🎉🚀 and numbers 12345",
    "",
    "  leading and trailing spaces, tabs\tand\nnewlines  ",
    "Mars Venus Jupiter Saturn " * 6,
]
# Python option name -> JavaScript option name
JS_NAMES = {"prompt_name": "promptName", "prompt": "prompt", "titles": "titles", "dim": "dim",
            "normalize": "normalize", "batch_size": "batchSize", "truncate": "truncate"}


def long_text(words: int) -> str:
    """A varied text of about ``words`` words (more tokens than words)."""
    base = ("The browser runs the same artifact as the laptop: onnxruntime-web reads model.onnx and its "
            "external weights, tokenizers.js reads tokenizer.json, and the vectors agree. ").split()
    return " ".join(f"{base[i % len(base)]}{'' if i % 7 else ' ' + str(i)}" for i in range(words))


def cases(emb: Embedder) -> list[dict]:
    """Calls that cover prompts, titles, dims, normalize, batching and truncation for this model."""
    dims = emb.dims
    over = long_text(emb.max_seq_length + 50)  # always past the maximum length
    medium = long_text(min(450, emb.max_seq_length // 2))  # past the 257-token window on the real model
    rows = 20 if emb.max_seq_length <= 512 else 10  # fewer on the real model: the browser tier's time
    mixed = [TEXTS[i % len(TEXTS)] * (1 + i % 4) for i in range(rows)] + [medium]
    out = [
        dict(name="queries", texts=TEXTS[:4], options=dict(prompt_name="query")),
        dict(name="documents with titles", texts=TEXTS[1:5], options=dict(prompt_name="document", titles=["Mars", None, "", "Code"])),
        dict(name="titles pick the document prompt", texts=TEXTS[2:4], options=dict(titles=["Planets", "Python"])),
        dict(name="single string, STS, second dim", texts=TEXTS[1], options=dict(prompt_name="STS", dim=dims[1])),
        dict(name="literal prompt", texts=TEXTS[4:7], options=dict(prompt="custom prefix: ")),
        dict(name="no prompt, unnormalised, smallest dim", texts=TEXTS, options=dict(normalize=False, dim=dims[-1])),
        dict(name="mixed lengths in small batches", texts=mixed, options=dict(prompt_name="document", batch_size=4)),
    ]
    if emb.max_seq_length <= 512:  # the real model's 2,048 tokens would make the browser tier slow
        out.append(dict(name="truncated at the maximum length", texts=[TEXTS[0], over, TEXTS[2]], options=dict(prompt_name="query")))
    return out


def run_case(emb: Embedder, case: dict) -> dict:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vectors = emb.encode(case["texts"], **case["options"])
    cut = [w.message for w in caught if isinstance(w.message, TruncationWarning)]
    texts = case["texts"]
    return dict(
        name=case["name"],
        texts=texts,
        options={JS_NAMES[k]: v for k, v in case["options"].items()},
        vectors=np.atleast_2d(vectors).astype(float).round(8).tolist(),
        single=isinstance(texts, str),
        truncated=list(cut[0].indices) if cut else [],
        prompted=emb.prompted(texts, case["options"].get("prompt_name"), prompt=case["options"].get("prompt"),
                              titles=case["options"].get("titles")),
    )


def batching_cases() -> list[dict]:
    """The length-grouping rule on fixed random lengths, for a JavaScript mirror to reproduce."""
    rng = np.random.default_rng(0)
    out = []
    for rows, tokens in ((4, 8192), (32, 8192), (64, 300), (8, 100)):
        lengths = [int(x) for x in rng.integers(1, 90, size=50)] + [30, 30, 30, 200]
        out.append(dict(lengths=lengths, maxRows=rows, maxTokens=tokens,
                        batches=[b.tolist() for b in length_batches(lengths, max_rows=rows, max_tokens=tokens)]))
    return out


def matmulnbits_levels(artifact: Path) -> set[int]:
    """The accuracy_level attributes of the artifact's MatMulNBits nodes (empty when it has none)."""
    import onnx

    model = onnx.load(str(Path(artifact) / "model.onnx"), load_external_data=False)
    return {a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"}


def level0_copy(artifact: Path, out: Path) -> Path:
    """``artifact`` with every MatMulNBits at accuracy_level 0 (the arithmetic wasm performs): a new
    model.onnx and manifest entry, the other files hard-linked (copied across file systems:
    onnxruntime refuses external data behind a symlink that leads out of the model's folder)."""
    import onnx

    artifact, out = Path(artifact), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(artifact / "model.onnx"), load_external_data=False)
    for node in model.graph.node:
        for a in node.attribute:
            if node.op_type == "MatMulNBits" and a.name == "accuracy_level":
                a.i = 0
    manifest = json.loads((artifact / MANIFEST_NAME).read_text(encoding="utf-8"))
    for name in manifest["files"]:
        if name != "model.onnx":
            try:
                os.link(artifact / name, out / name)
            except OSError:
                shutil.copyfile(artifact / name, out / name)
    onnx.save(model, str(out / "model.onnx"))  # external data stays where the links point
    manifest["files"]["model.onnx"] = {"sha256": sha256_file(out / "model.onnx"), "size": (out / "model.onnx").stat().st_size}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")
    return out


def references(name: str, artifact: Path, scratch: Path) -> list[dict]:
    """One reference per comparison for ``artifact``: as shipped, plus level-0 arithmetic when it has
    MatMulNBits at a level wasm does not implement."""
    levels = matmulnbits_levels(artifact)
    manifest = json.loads((Path(artifact) / MANIFEST_NAME).read_text(encoding="utf-8"))
    if (manifest.get("quantization") or {}).get("int8_path"):
        return [reference(name, artifact, min_cosine=ACTIVATION_CODES_MIN_COSINE,
                          note="int8 activation codes: wasm and native float32 kernels round a few boundary activations to neighbouring codes")]
    if not levels - {0}:
        return [reference(name, artifact)]
    shipped = reference(name, artifact, min_cosine=LEVEL4_MIN_COSINE,
                        note=f"Python runs MatMulNBits at accuracy_level {sorted(levels)} (int8 activations); wasm at float32")
    same = reference(f"{name} (level-0 arithmetic)", artifact, python_dir=level0_copy(artifact, scratch / f"{name}-level0"),
                     note="Python runs the same weights with MatMulNBits at accuracy_level 0, as wasm does")
    return [shipped, same]


def reference(name: str, artifact: Path, *, python_dir: Path | None = None, min_cosine: float = MIN_COSINE,
              note: str = "") -> dict:
    """Everything the JavaScript tests compare for one artifact folder (vectors from ``python_dir``
    when given: an equivalent folder the Python runtime reads instead)."""
    emb = Embedder(python_dir or artifact, threads=2, verify=python_dir is None)
    count_texts = TEXTS + [long_text(emb.max_seq_length + 50)]
    return dict(
        name=name, dir=str(artifact), variant=emb.variant, dims=list(emb.dims), max_seq_length=emb.max_seq_length,
        min_cosine=min_cosine, note=note,
        cases=[run_case(emb, c) for c in cases(emb)],
        token_counts=dict(texts=count_texts, promptName="query",
                          truncated=emb.count_tokens(count_texts, "query"),
                          full=emb.count_tokens(count_texts, "query", truncate=False)),
    )


def write_reference(out: Path, artifacts: dict[str, Path]) -> Path:
    """Write one JSON file with the references of every named artifact and the batching cases."""
    with tempfile.TemporaryDirectory(prefix="web-reference-") as scratch:
        refs = [r for n, d in artifacts.items() for r in references(n, Path(d), Path(scratch))]
    data = dict(artifacts=refs, batching=batching_cases())
    Path(out).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return Path(out)


if __name__ == "__main__":
    if len(sys.argv) < 3 or any("=" not in a for a in sys.argv[2:]):
        sys.exit("usage: python tests/web_reference.py OUT.json NAME=ARTIFACT_DIR [NAME=DIR ...]")
    print(write_reference(Path(sys.argv[1]), dict(a.split("=", 1) for a in sys.argv[2:])))
