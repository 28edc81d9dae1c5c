"""Run any artifact folder on real MTEB tasks: an ``mteb.models.AbsEncoder`` around ``runtime.Embedder``.

    import mteb
    from quality.mteb_adapter import EmbedderEncoder

    model = EmbedderEncoder("artifacts/q4_0", threads=2)
    results = mteb.evaluate(model, mteb.get_tasks(tasks=["STSBenchmark", "SciFact"]))

Needs ``mteb >= 2`` (the ``mteb`` extra), which itself needs torch and reaches the Hugging Face Hub for
its task data; the embeddings still come from onnxruntime. Prompts are chosen by mteb's own
``get_prompt_name`` over the artifact's prompts, which is what mteb's sentence-transformers wrapper
does for the original model, so scores are comparable with published EmbeddingGemma results.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder  # not re-exported by mteb.models in 2.12
from mteb.models.model_meta import ScoringFunction
from mteb.types import PromptType

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from torch.utils.data import DataLoader


class EmbedderEncoder(AbsEncoder):
    """mteb encoder protocol (>= 2) for an EmbeddingGemma artifact folder."""

    def __init__(self, model: str | Path | Any, *, threads: int | None = None, dim: int | None = None,
                 batch_size: int = 32, verify: bool = True, name: str | None = None):
        """model: an artifact folder or an already loaded ``runtime.Embedder``. dim: a Matryoshka size to
        evaluate at (default: the full dim). name: the model name mteb stores results under (default:
        ``local/embeddinggemma-300m-onnx-{variant}`` plus ``-{dim}d`` for a truncated dim)."""
        from runtime import Embedder

        self.model = model if isinstance(model, Embedder) else Embedder(model, threads=threads, verify=verify)
        self.dim = self.model.dim if dim is None else int(dim)
        if self.dim not in self.model.dims:
            raise ValueError(f"dim {self.dim} is not one of this model's dims {self.model.dims}")
        self.batch_size = batch_size
        # mteb's sentence-transformers wrapper drops prompt keys it cannot place (neither a task type, a
        # prompt type, a task name nor a compound of them) with a warning; do the same.
        prompts, invalid = self.validate_task_to_prompt_name(dict(self.model.prompts), raise_for_invalid_keys=False)
        if invalid:
            warnings.warn("ignoring prompts mteb cannot use: " + "; ".join(invalid), stacklevel=2)
        self.model_prompts = prompts
        m = self.model.manifest
        sha = (m.get("files", {}).get(m.get("model_file", "model.onnx"), {}) or {}).get("sha256", "")
        default = f"local/embeddinggemma-300m-onnx-{self.model.variant}" + (f"-{self.dim}d" if self.dim != self.model.dim else "")
        self.mteb_model_meta = ModelMeta.create_empty(overwrites=dict(
            name=name or default, revision=sha[:12] or None, embed_dim=self.dim, max_tokens=self.model.max_seq_length,
            similarity_fn_name=ScoringFunction.COSINE, framework=["ONNX"], use_instructions=True,
            open_weights=True, license="gemma", modalities=["text"],
        ))
        # (task name, prompt type, prompt name, number of texts) of every encode call, for inspection.
        self.calls: list[tuple[str, str | None, str | None, int]] = []

    def encode(self, inputs: DataLoader, *, task_metadata: TaskMetadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        """Embed the ``text`` of every batch with the prompt mteb resolves for this task and side."""
        texts = [text for batch in inputs for text in batch["text"]]
        prompt_name = self.get_prompt_name(task_metadata, prompt_type)
        self.calls.append((task_metadata.name, prompt_type.value if prompt_type else None, prompt_name, len(texts)))
        batch_size = int(kwargs.get("batch_size") or self.batch_size)
        # None: no prompt matched, and mteb's wrapper then passes prompt=None, i.e. the model's default prompt
        # (EmbeddingGemma has none), which is what Embedder does for prompt_name=None too.
        return self.model.encode(texts, prompt_name=prompt_name, dim=self.dim, batch_size=batch_size,
                                 show_progress=bool(kwargs.get("show_progress_bar", False)))
