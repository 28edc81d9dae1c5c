"""Checkpoint -> self-contained fp32 ONNX artifact folder."""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

from runtime import __version__
from runtime.artifact import update_manifest, write_manifest
from runtime.outputs import staged_output

from .checkpoint import Checkpoint
from .pipeline import pipeline_from_sentence_transformer
from .tokenizer_files import ship_sentencepiece

log = logging.getLogger("export")

MATRYOSHKA_DIMS = (768, 512, 256, 128)  # EmbeddingGemma's trained sizes (model card); not in its configs
OPSET = 20
# Self-check texts: a short one and one long enough to cross the sliding window of small configs.
_CHECK_TEXTS = ["Which planet is known as the Red Planet?",
                "Mars, known for its reddish appearance, is often referred to as the Red Planet. " * 24]
CHECK_MIN_COSINE = 0.9999


def export_artifact(checkpoint: Checkpoint, out: str | Path, force: bool = False, opset: int = OPSET,
                    matryoshka_dims: tuple[int, ...] = MATRYOSHKA_DIMS, check_texts: list[str] | None = None) -> Path:
    """Trace the checkpoint's embedding pipeline to ONNX and write the fp32 artifact folder ``out``."""
    import torch
    from sentence_transformers import SentenceTransformer

    steps = _Steps(6)
    with staged_output(out, force=force) as stage:
        steps("loading the checkpoint with sentence-transformers")
        st = SentenceTransformer(str(checkpoint.folder), device="cpu", local_files_only=True,
                                 model_kwargs={"attn_implementation": "eager"})
        pipeline = pipeline_from_sentence_transformer(st)
        dim = int(st.get_embedding_dimension())
        dims = tuple(sorted({dim, *(d for d in matryoshka_dims if d <= dim)}, reverse=True))

        steps("tracing to ONNX with torch.onnx (dynamo); about 2-3 minutes for the 300M model")
        example = st.tokenizer(["a short example", "a somewhat longer example text " * 3], padding=True,
                               return_tensors="pt")
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not actionable by users
            program = torch.onnx.export(
                pipeline, (example["input_ids"], example["attention_mask"]), dynamo=True, opset_version=opset,
                input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"],
                dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                optimize=True,
            )
        steps("writing model.onnx with external weights")
        program.save(str(stage / "model.onnx"), external_data=True)
        del program
        _name_weights(stage / "model.onnx")
        steps("fusing RMSNorms into onnxruntime's normalisation operators")
        log.info("fused norms: %s", _fuse_norms(stage / "model.onnx"))
        st.tokenizer.backend_tokenizer.save(str(stage / "tokenizer.json"))
        sentencepiece = ship_sentencepiece(checkpoint.folder, stage, st.tokenizer, int(st.max_seq_length))

        steps("hashing files and writing the manifest")
        manifest = _manifest(checkpoint, st, dim, dims, opset)
        if sentencepiece:
            manifest["sentencepiece"] = sentencepiece
        write_manifest(stage, manifest)

        steps("checking the ONNX graph against torch")
        cosines = _self_check(st, stage, check_texts or _CHECK_TEXTS)
        if min(cosines) < CHECK_MIN_COSINE:
            raise RuntimeError(f"exported graph disagrees with torch: cosines {cosines} < {CHECK_MIN_COSINE}")
        # The manifest does not hash itself, so recording the check afterwards keeps it valid.
        update_manifest(stage, export_check={"texts": len(cosines), "min_cosine_vs_torch": min(cosines)})
    log.info("fp32 artifact written to %s", out)
    return Path(out)


def _name_weights(path: Path) -> None:
    """Rename anonymous weights after their modules; only the small graph file is rewritten."""
    import onnx

    from .graph_names import rename_weights, strip_metadata

    model = onnx.load(str(path), load_external_data=False)
    rename_weights(model)
    strip_metadata(model)
    onnx.save(model, str(path))


def _fuse_norms(path: Path) -> dict[str, int]:
    """Rewrite the staged graph file with fused RMSNorms; the weights file is left as it is.

    The fusion's shape inference reads small constants (shapes, rotary frequencies, norm weights),
    so those are loaded into the graph; the large matrices stay in the external file, which keeps
    the export's peak memory where it was (loading everything would double it).
    """
    import onnx

    from runtime.onnx_helpers import internalize_external_data

    from .fusions import fuse_rms_norms

    model = onnx.load(str(path), load_external_data=False)
    internalize_external_data(model, path.parent, max_bytes=_INLINE_BYTES)
    counts = fuse_rms_norms(model)
    onnx.save(model, str(path))
    return counts


# Constants up to this size are read into the graph for the fusion's shape inference.
_INLINE_BYTES = 1 << 16


def _self_check(st, folder: Path, texts: list[str]) -> list[float]:
    """Cosines between sentence-transformers (torch) and the staged artifact loaded by the real runtime."""
    from runtime.compare import cosines_to

    ref = st.encode(texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    return [float(x) for x in cosines_to({None: ref}, folder, texts)[None]]


def _manifest(checkpoint: Checkpoint, st, dim: int, dims: tuple[int, ...], opset: int) -> dict:
    import sentence_transformers
    import torch
    import transformers

    tokenizer = st.tokenizer
    config = st[0].auto_model.config
    return {
        "variant": "fp32",
        "quantization": {"recipe": "fp32", "groups": {
            "embeddings": "fp32", "attention": "fp32", "feed_forward": "fp32", "projection": "fp32", "norms": "fp32"}},
        "source": {"model": checkpoint.model_id, "revision": checkpoint.revision,
                   "weights_sha256": checkpoint.weights_sha256},
        "model_file": "model.onnx",
        "tokenizer_file": "tokenizer.json",
        "pad_token_id": int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        "max_seq_length": int(st.max_seq_length),
        "embedding": {"dim": dim, "matryoshka_dims": list(dims), "pooling": "mean", "include_prompt": True,
                      "normalize": "runtime (L2 after optional Matryoshka truncation)"},
        "prompts": dict(st.prompts),
        "default_prompt_name": st.default_prompt_name,
        "onnx": {"opset": opset,
                 "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
                            {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]}],
                 "outputs": [{"name": "sentence_embedding", "dtype": "float32", "shape": ["batch", dim]}]},
        "architecture": {"model_type": config.model_type, "num_hidden_layers": config.num_hidden_layers,
                         "hidden_size": config.hidden_size, "sliding_window_exclusive": int(config.sliding_window),
                         "layer_types": list(config.layer_types)},
        "written_by": {"project": "embeddinggemma-onnx", "version": __version__, "stage": "export",
                       "torch": torch.__version__, "transformers": transformers.__version__,
                       "sentence_transformers": sentence_transformers.__version__,
                       "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }


class _Steps:
    """Numbered progress lines with elapsed time; the long step (tracing) has no finer progress to show."""

    def __init__(self, total: int):
        self.total, self.n, self.t0 = total, 0, time.time()

    def __call__(self, message: str) -> None:
        self.n += 1
        log.info("[%d/%d %5.1fs] %s", self.n, self.total, time.time() - self.t0, message)
