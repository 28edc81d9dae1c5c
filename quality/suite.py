"""Run the quality tasks on one model and compare models with each other.

An *encoder* here is anything with ``prompts`` (name -> prefix), ``dims`` (Matryoshka sizes, largest
first), ``encode(texts, prompt_name) -> [n, dim]`` unit-length float32 rows and
``count_tokens(texts, prompt_name)``. :class:`ArtifactEncoder` wraps ``runtime.Embedder`` (torch-free);
:class:`SentenceTransformerEncoder` wraps the reference sentence-transformers model and is the only
place that imports torch.

Each text group of each task is embedded once at the full dimension; the smaller Matryoshka dims are
the first values re-normalised (what ``Embedder.encode(dim=...)`` returns), so scoring every dim and the
fidelity checks cost no extra model runs.
"""
from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from runtime.vectors import finish, l2_normalize, row_cosines

from . import metrics
from .prompts import resolve_prompt_name
from .task_types import Task


class Encoder(Protocol):
    """What the suite needs from a model."""

    prompts: dict[str, str]
    dims: tuple[int, ...]

    def encode(self, texts: list[str], prompt_name: str | None) -> np.ndarray:
        """Unit-length float32 rows [n, largest dim] of ``texts`` with the named prompt."""

    def count_tokens(self, texts: list[str], prompt_name: str | None) -> list[int]:
        """Tokens the model sees per text, prompt included."""

    def describe(self) -> dict:
        """What the report says about the model (kind, variant, size, load time, ...)."""


class ArtifactEncoder:
    """An artifact folder run by ``runtime.Embedder`` (onnxruntime + tokenizers + numpy)."""

    kind = "onnx-artifact"

    def __init__(self, path: str | Path, *, threads: int | None = None, verify: bool = True, batch_size: int = 32):
        """Load the artifact; ``threads`` is onnxruntime's intra-op thread count (default: all cores)."""
        from runtime import Embedder

        t0 = time.perf_counter()
        self.path = Path(path)
        self.embedder = Embedder(path, threads=threads, verify=verify)
        self.load_seconds = time.perf_counter() - t0
        self.prompts = dict(self.embedder.prompts)
        self.dims = tuple(sorted(self.embedder.dims, reverse=True))
        self.batch_size = batch_size
        self.threads = threads
        self.truncated = 0

    def encode(self, texts, prompt_name):
        """Unit-length full-dimension embeddings with the named prompt (None: the model's default).

        Texts beyond the model's maximum length are truncated (as mteb's encoders do); how many were is
        counted in ``truncated`` instead of warning once per call.
        """
        from runtime.embedder import TruncationWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TruncationWarning)
            out = self.embedder.encode(list(texts), prompt_name=prompt_name, batch_size=self.batch_size)
        for w in caught:
            if issubclass(w.category, TruncationWarning):
                self.truncated += len(w.message.indices)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return out

    def count_tokens(self, texts, prompt_name):
        """Tokens the model sees per text, prompt included."""
        return self.embedder.count_tokens(list(texts), prompt_name=prompt_name)

    def describe(self) -> dict:
        """Variant, size on disk and provenance from the manifest."""
        from runtime.artifact import accuracy_levels

        m = self.embedder.manifest
        files = m.get("files", {})
        if isinstance(files, dict) and files:
            sizes = {name: int(f.get("size", 0)) for name, f in files.items()}
        else:  # fall back to what is on disk
            sizes = {p.name: p.stat().st_size for p in self.path.iterdir() if p.is_file()}
        return {"kind": self.kind, "path": str(self.path), "variant": self.embedder.variant,
                "size_bytes": int(sum(sizes.values())),
                # the graph and weights alone: the tokenizer is the same in every variant
                "model_bytes": int(sum(v for k, v in sizes.items() if not k.startswith("tokenizer"))),
                "load_seconds": round(self.load_seconds, 3), "threads": self.threads,
                "quantization": m.get("quantization"), "accuracy_level": accuracy_levels(m.get("quantization")),
                "dim": self.embedder.dim,
                "max_seq_length": self.embedder.max_seq_length, "truncated_texts": self.truncated}


class SentenceTransformerEncoder:
    """The reference: sentence-transformers running the original checkpoint on torch (CPU)."""

    kind = "sentence-transformers"

    def __init__(self, checkpoint: str | Path, *, dims: Sequence[int] | None = None, threads: int | None = None,
                 batch_size: int = 32):
        """Load the checkpoint; ``dims`` are the Matryoshka sizes to report (default: the full dim only)."""
        import torch  # torch only here: the rest of the suite must run without it
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        t0 = time.perf_counter()
        self.path = Path(checkpoint)
        self.model = SentenceTransformer(str(checkpoint), device="cpu")
        self.load_seconds = time.perf_counter() - t0
        self.prompts = dict(self.model.prompts)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        full = int(get_dim())
        self.dims = tuple(sorted(dims, reverse=True)) if dims else (full,)
        self.batch_size = batch_size
        self.threads = threads

    def encode(self, texts, prompt_name):
        """Unit-length full-dimension embeddings with the named prompt."""
        emb = self.model.encode(list(texts), prompt_name=prompt_name, batch_size=self.batch_size,
                                convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)

    def count_tokens(self, texts, prompt_name):
        """Tokens the model sees per text, prompt included, after truncation."""
        prefix = self.prompts.get(prompt_name, "") if prompt_name else ""
        enc = self.model.tokenizer([prefix + t for t in texts], truncation=True,
                                   max_length=self.model.max_seq_length)
        return [len(ids) for ids in enc["input_ids"]]

    def describe(self) -> dict:
        """Checkpoint path and the size of its weight files."""
        size = sum(p.stat().st_size for p in self.path.rglob("*.safetensors"))
        return {"kind": self.kind, "path": str(self.path), "variant": "sentence-transformers fp32 (torch)",
                "size_bytes": int(size), "model_bytes": int(size), "load_seconds": round(self.load_seconds, 3),
                "threads": self.threads, "quantization": None}


@dataclass
class RunResult:
    """One model's pass over the tasks."""

    label: str
    info: dict
    scores: dict[str, dict[int, dict]] = field(default_factory=dict)     # task -> dim -> score dict
    embeddings: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (task, group) -> [n, full dim]
    # task -> its per-unit scores at the full dim (Task.evaluate_units), kept so a report's drop
    # details need no second run of the task's protocol (k-means, classifiers)
    unit_scores: dict[str, np.ndarray] = field(default_factory=dict)
    prompts_used: dict[str, dict[str, str | None]] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)                 # task -> tokens embedded
    embed_seconds: dict[str, float] = field(default_factory=dict)        # task -> seconds in encode()
    wall_seconds: float = 0.0
    dims: tuple[int, ...] = ()
    random_error: dict | None = None   # random_error_spread() vs the baseline, when computed

    def main_score(self, task: str, dim: int | None = None) -> float:
        """The task's main score in points at ``dim`` (default: the full dim)."""
        return self.scores[task][dim or self.dims[0]]["main_score"]

    @property
    def total_tokens(self) -> int:
        """Tokens embedded over all tasks."""
        return int(sum(self.tokens.values()))

    @property
    def total_embed_seconds(self) -> float:
        """Seconds spent in ``encode`` over all tasks."""
        return float(sum(self.embed_seconds.values()))

    def summary(self) -> dict:
        """JSON-friendly summary (no embeddings)."""
        full = self.dims[0]
        return {"label": self.label, **self.info, "dims": list(self.dims),
                "wall_seconds": round(self.wall_seconds, 2), "embed_seconds": round(self.total_embed_seconds, 2),
                "tokens": self.total_tokens,
                "tokens_per_second": round(self.total_tokens / self.total_embed_seconds, 1)
                if self.total_embed_seconds else None,
                "mean_main_score": float(np.mean([s[full]["main_score"] for s in self.scores.values()])),
                "scores": {t: s[full]["main_score"] for t, s in self.scores.items()},
                "scores_by_dim": {str(d): {t: s[d]["main_score"] for t, s in self.scores.items()} for d in self.dims},
                "details": {t: _jsonable(s[full]) for t, s in self.scores.items()},
                "prompts_used": self.prompts_used,
                "per_task_seconds": {t: round(v, 2) for t, v in self.embed_seconds.items()},
                "per_task_tokens": dict(self.tokens),
                "random_error": self.random_error}


def _jsonable(d: dict) -> dict:
    return {k: (float(v) if isinstance(v, (np.floating, float)) else
                [float(x) for x in v] if isinstance(v, (list, tuple)) else v) for k, v in d.items()}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_suite(encoder: Encoder, tasks: Sequence[Task], *, label: str,
              log: Callable[[str], None] | None = _log) -> RunResult:
    """Embed every task's texts with ``encoder`` (each task's prompts resolved as mteb does) and score
    each task at every Matryoshka dim of the encoder."""
    log = log or (lambda m: None)
    dims = tuple(encoder.dims)
    result = RunResult(label=label, info=encoder.describe(), dims=dims)
    start = time.perf_counter()
    for task in tasks:
        emb, used, tokens, secs = {}, {}, 0, 0.0
        for group in task.groups():
            name = resolve_prompt_name(encoder.prompts, task.name, task.type, group.prompt_type)
            used[group.key] = name
            tokens += int(sum(encoder.count_tokens(group.texts, name)))
            t0 = time.perf_counter()
            emb[group.key] = np.asarray(encoder.encode(group.texts, name), dtype=np.float32)
            secs += time.perf_counter() - t0
            result.embeddings[(task.name, group.key)] = emb[group.key]
        scores, units = task.evaluate_units({k: finish(v, dims[0]) for k, v in emb.items()})
        result.scores[task.name] = {dims[0]: scores} | {d: task.evaluate({k: finish(v, d) for k, v in emb.items()})
                                                         for d in dims[1:]}
        if units is not None:
            result.unit_scores[task.name] = units
        result.prompts_used[task.name] = used
        result.tokens[task.name] = tokens
        result.embed_seconds[task.name] = secs
        log(f"[{label}] {task.name}: {result.scores[task.name][dims[0]]['main_score']:.2f} "
            f"({tokens} tokens in {secs:.1f} s)")
    result.wall_seconds = time.perf_counter() - start
    result.info = encoder.describe()  # again, now that it knows e.g. how many texts were truncated
    return result


def fidelity(reference: RunResult, other: RunResult, *, k: int = 10) -> dict:
    """Per Matryoshka dim: cosine of each text's embedding to the reference's (mean, min, 1st
    percentile) and top-k neighbour overlap within each text group, over every embedded task text.

    Neighbours are found within a group (e.g. a task's corpus or its test set) because that is where
    a task compares texts; groups with no more than k texts are skipped for the overlap.
    """
    dims = [d for d in reference.dims if d in other.dims]
    out: dict = {}
    for d in dims:
        cos_all, overlap_all, per_task = [], [], {}
        for key, ref in reference.embeddings.items():
            if key not in other.embeddings:
                continue
            a, b = finish(ref, d), finish(other.embeddings[key], d)
            cos = row_cosines(a, b)
            cos_all.append(cos)
            entry = per_task.setdefault(key[0], {"cos": [], "overlap": []})
            entry["cos"].append(cos)
            if len(a) > k:
                ov = metrics.neighbour_overlap(a, b, k=k)
                overlap_all.append(ov)
                entry["overlap"].append(ov)
        cos = np.concatenate(cos_all)
        ov = np.concatenate(overlap_all) if overlap_all else np.array([np.nan])
        out[str(d)] = {
            "texts": int(cos.size), "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "cos_p01": float(np.percentile(cos, 1)), f"top{k}_overlap_mean": float(np.nanmean(ov)),
            f"top{k}_overlap_min": float(np.nanmin(ov)),
            "per_task": {t: {"cos_mean": float(np.concatenate(v["cos"]).mean()),
                             "cos_min": float(np.concatenate(v["cos"]).min()),
                             f"top{k}_overlap_mean": float(np.concatenate(v["overlap"]).mean()) if v["overlap"] else None}
                         for t, v in per_task.items()},
        }
    return out


def random_error_spread(tasks: Sequence[Task], reference: RunResult, other: RunResult, *, trials: int = 5,
                        seed: int = 0) -> dict:
    """How much each task's main score moves under error of the same size as ``other``'s but in a
    random direction: a noise floor for reading a drop.

    For every text, the reference embedding is turned by the same angle that separates it from
    ``other``'s embedding, towards a random direction; the perturbed set is scored like a variant. A
    drop well outside this spread is caused by the direction of the variant's error (systematic);
    a drop inside it is what the task's protocol does with any error that large (e.g. k-means
    landing in another local optimum). Full dimension only. Returns per task the drops of each
    trial, their mean and standard deviation.
    """
    rng = np.random.default_rng(seed)
    full = reference.dims[0]
    out: dict = {}
    for task in tasks:
        base = reference.main_score(task.name, full)
        drops = []
        for _ in range(trials):
            emb = {}
            for group in task.groups():
                a = l2_normalize(reference.embeddings[(task.name, group.key)])
                b = l2_normalize(other.embeddings[(task.name, group.key)])
                cos = np.clip(np.sum(a * b, axis=1, keepdims=True), -1.0, 1.0)
                r = rng.standard_normal(a.shape).astype(np.float32)
                r -= np.sum(r * a, axis=1, keepdims=True) * a      # orthogonal to the reference row
                r = l2_normalize(r)
                emb[group.key] = cos * a + np.sqrt(1.0 - cos**2) * r  # same angle, random direction
            drops.append(base - task.evaluate(emb)["main_score"])
        out[task.name] = {"drops": [float(d) for d in drops], "mean": float(np.mean(drops)),
                          "std": float(np.std(drops, ddof=1)) if trials > 1 else 0.0}
    return out
