"""Activation statistics of the fp32 artifact on fixed calibration texts, for the calibrated methods.

``collect_statistics`` runs the fp32 graph in onnxruntime with every MatMul input added as an extra
graph output and accumulates, per distinct input, ``H = X^T X`` ([K, K], float64: what GPTQ and the
activation-aware scales need) and, for the integer path, the per-channel max |x|, instead of
keeping activations. numpy, onnx and onnxruntime only (the tokenizer is the runtime's).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.batching import length_batches, pad_batch
from runtime.progress import progress_bar

from .graph import head_chain, pooling_states
from .gptq import DAMP, HEAD_DAMP

CALIBRATION_FILE = Path(__file__).with_name("calibration_texts.json")
# Token rows buffered before X^T X is accumulated (one product per activation over many short texts).
_FLUSH_ROWS = 512
#: Calibration texts run in batches of similar length, padded to at most this many token positions
#: (padding rows are dropped from the statistics); one text per run is mostly per-run overhead.
CALIBRATION_BATCH_TOKENS = 2048
#: Calibration texts are cut at this many tokens (as good as uncut texts, docs/notes/quant.md).
CALIBRATION_MAX_TOKENS = 512
#: The Dense heads see one pooled row per text, too few for GPTQ: means of this many random token
#: windows of each calibration text (fixed seed) are added as pooled rows (docs/notes/quant.md).
POOLED_WINDOWS_PER_TEXT = 60


@dataclass
class ActivationStats:
    """What calibration measured: per MatMul input its ``X^T X`` (float64 [K, K], summed over rows),
    the rows behind it, the per-channel max |x| (float32 [K]; integer path only) and a description
    for the manifest."""

    hessians: dict[str, np.ndarray]
    rows: dict[str, int]
    absmax: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def load_calibration_texts(path: str | Path | None = None) -> list[str]:
    """The packaged calibration texts (or those in ``path``): a JSON list of strings or of {"text": ...}."""
    data = json.loads(Path(path or CALIBRATION_FILE).read_text(encoding="utf-8"))
    texts = [d["text"] if isinstance(d, dict) else d for d in data]
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise ValueError(f"{path or CALIBRATION_FILE} must be a non-empty list of non-empty texts")
    return texts


def collect_statistics(src, texts: list[str], threads: int | None = None, progress: bool = True,
                       max_tokens: int | None = None, with_absmax: bool = False) -> ActivationStats:
    """Activation statistics of every distinct MatMul input of the fp32 artifact ``src``
    (a ``quant.source.Fp32Source``).

    Each text runs once, bare or behind one of the artifact's prompts (taken in turn), so the
    statistics cover how the model is used; texts are cut at ``max_tokens`` (default
    ``CALIBRATION_MAX_TOKENS``). Texts of similar length share a batch (the runtime's
    ``length_batches``); padding rows are left out. ``with_absmax`` also records the per-channel max
    |x| (the integer path's smoothing factors need it).
    """
    import onnx

    from runtime.onnx_helpers import read_initializer

    sites = [s for s in src.sites if s.op == "MatMul"]
    acts = sorted({s.activation for s in sites}, key=[s.activation for s in sites].index)
    model = onnx.load(str(src.folder / src.manifest["model_file"]), load_external_data=False)
    heads = head_chain(model, src.sites)
    states = pooling_states(model, heads[0].activation) if heads else None
    first_head = None
    if states is not None:
        first_head = read_initializer(next(i for i in model.graph.initializer if i.name == heads[0].name),
                                      src.folder).astype(np.float32)
    encodings, cut = _calibration_inputs(src, texts, max_tokens)
    fetch = acts + ([states] if states else [])
    session = _instrumented_session(src, model, fetch, threads)
    del model
    acc = _Accumulator({s.activation: s.k for s in sites}, with_absmax)
    rng = np.random.default_rng(0)
    pad_id = int(src.manifest.get("pad_token_id", 0))
    buffered = 0
    with progress_bar(sum(map(len, encodings)), "calibrating", progress, unit="token") as bar:
        for batch in length_batches([len(e) for e in encodings], max_rows=len(encodings),
                                    max_tokens=CALIBRATION_BATCH_TOKENS):
            lengths = [len(encodings[i]) for i in batch]
            ids, mask = pad_batch([encodings[i] for i in batch], pad_id)
            outs = session.run(fetch, {"input_ids": ids, "attention_mask": mask})
            for name, x in zip(acts, outs):
                x = np.asarray(x, np.float32)
                # token rows: padding positions are dropped (attention never lets them reach real
                # tokens, so the kept rows equal those of each text run alone); pooled rows: one per text
                if x.ndim == 3:
                    acc.add(name, *(x[r, :n] for r, n in enumerate(lengths)))
                else:
                    acc.add(name, x.reshape(-1, x.shape[-1]))
            if states:
                hidden = np.asarray(outs[-1], np.float32)
                for r, n in enumerate(lengths):
                    pooled = window_means(hidden[r, :n], POOLED_WINDOWS_PER_TEXT, rng)
                    acc.add(heads[0].activation, pooled)
                    if len(heads) > 1:   # the second head reads the first one's output: same rows through it
                        acc.add(heads[1].activation, pooled @ first_head)
            del outs
            buffered += sum(lengths)
            if buffered >= _FLUSH_ROWS:
                acc.flush()
                buffered = 0
            bar.update(sum(lengths))
    acc.flush()
    info = {"texts": len(texts), "tokens": int(sum(map(len, encodings))),
            "prompts": "each text once: bare or behind one of the artifact's prompts, in turn",
            "max_tokens_per_text": cut,
            "texts_sha256": hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest(),
            "min_rows_per_weight": int(min(acc.rows.values())), "damp": DAMP}
    if states:
        info["heads"] = {"pooled_windows_per_text": POOLED_WINDOWS_PER_TEXT, "damp": HEAD_DAMP,
                         "why": "one pooled row per text is too few for GPTQ on the Dense heads; means of random "
                                "token windows of each text (seed 0) are added"}
    return ActivationStats(acc.hessians, acc.rows, acc.absmax if with_absmax else {}, info)


def _calibration_inputs(src, texts: list[str], max_tokens: int | None) -> tuple[list[list[int]], int]:
    """Token ids of each calibration text behind its prompt (bare or one of the artifact's, in turn),
    cut at ``max_tokens``; and that cut."""
    from runtime.tokenizer import HFTokenizer

    cut = min(int(max_tokens or CALIBRATION_MAX_TOKENS), int(src.manifest["max_seq_length"]))
    prompts = [""] + sorted(set(src.manifest.get("prompts", {}).values()) - {""})
    tokenizer = HFTokenizer(src.folder / src.manifest["tokenizer_file"], cut)
    ids, _ = tokenizer.encode_batch([prompts[i % len(prompts)] + t for i, t in enumerate(texts)])
    return ids, cut


def _instrumented_session(src, model, fetch: list[str], threads: int | None):
    """An onnxruntime session of the fp32 graph with ``fetch`` added as outputs, of whatever type each
    is (the graph from memory, its weights from the artifact folder, which is never written to)."""
    import onnxruntime as ort
    from onnx import helper

    from runtime.embedder import runtime_session_options

    existing = {o.name for o in model.graph.output}
    for name in fetch:
        if name not in existing:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = runtime_session_options(threads, low_memory=False)
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(src.folder))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class _Accumulator:
    """Per activation: rows waiting to be added, ``X^T X``, rows counted and max |x| per channel."""

    def __init__(self, widths: dict[str, int], with_absmax: bool):
        self.pending: dict[str, list[np.ndarray]] = {a: [] for a in widths}
        self.hessians = {a: np.zeros((k, k), np.float64) for a, k in widths.items()}
        self.rows = dict.fromkeys(widths, 0)
        self.absmax = {a: np.zeros(k, np.float32) for a, k in widths.items()} if with_absmax else None

    def add(self, name: str, *rows: np.ndarray) -> None:
        """Queue row blocks [n, K] of one activation (views; copied once by ``flush``)."""
        self.pending[name].extend(rows)

    def flush(self) -> None:
        """One X^T X per activation over everything queued (per-call overhead dominated otherwise)."""
        for name, queued in self.pending.items():
            if queued:
                x = np.concatenate(queued)
                self.hessians[name] += (x.T @ x).astype(np.float64)
                if self.absmax is not None:
                    np.maximum(self.absmax[name], np.abs(x).max(axis=0), out=self.absmax[name])
                self.rows[name] += x.shape[0]
                queued.clear()


def window_means(x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``count`` random contiguous windows (uniform length 1..T, uniform start) of ``x`` [T, H]."""
    t = x.shape[0]
    csum = np.concatenate([np.zeros((1, x.shape[1]), np.float64), np.cumsum(x, axis=0, dtype=np.float64)])
    length = rng.integers(1, t + 1, count)
    start = rng.integers(0, t - length + 1)
    return ((csum[start + length] - csum[start]) / length[:, None]).astype(np.float32)
