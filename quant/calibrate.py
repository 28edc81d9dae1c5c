"""Calibrated choice of stored values inside the ggml Q8_0 / Q4_0 formats.

Nothing here changes the format: every block still holds one float16 scale ``d`` and codes in range
(Q8_0: -127..127, value ``q*d``; Q4_0: nibble 0..15, value ``(q-8)*d``), so ``quant.formats`` and
onnxruntime decode them exactly as ggml would. Only *which* codes and scales are stored changes:

* ``collect_hessians`` runs the fp32 graph in onnxruntime over fixed calibration texts with every
  MatMul input added as an extra graph output, and accumulates ``H = X^T X`` per distinct input
  ([K, K], float64) instead of keeping activations.
* ``gptq_quantize`` is GPTQ (Frantar et al., 2022) adapted to ggml blocks: columns are quantized
  one at a time along K and each column's rounding error is fed back into the columns not yet
  quantized through the inverse Hessian. A block's scale is chosen when the block starts, from
  the error-updated weights, by ``search_scales`` weighted with the Hessian diagonal.
* ``search_scales`` picks, per block, the float16 scale among candidates around the ggml one that
  minimises ``sum_k w_k (x_k - dequant_k)^2`` (with ``w_k = 1`` for the token table, which sees no
  activations).

numpy, onnx, onnxruntime and tokenizers (a runtime dependency) only.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.batching import length_batches

from . import formats as F

log = logging.getLogger("quant")

CALIBRATION_FILE = Path(__file__).with_name("calibration_texts.json")
#: GPTQ dampening, as a fraction of the mean Hessian diagonal (the GPTQ paper's default).
DAMP = 0.01
#: Columns per lazy-update batch in GPTQ (a multiple of the 32-weight block).
GPTQ_BATCH = 128
# Token rows buffered before X^T X is accumulated (98 inputs x 512 rows x 768 floats = 150 MB).
_FLUSH_ROWS = 512
#: Calibration texts run in batches of similar length, padded to at most this many token positions
#: (padding rows are dropped from the statistics). One text per run wasted most of the time on
#: per-run overhead for short texts (docs/notes/quant.md has the timing).
CALIBRATION_BATCH_TOKENS = 2048
#: Calibration texts are cut at this many tokens. All 439 texts once each, cut here (~86k tokens),
#: gave the Q4_0 fidelity of the non-code texts run twice, uncut (~88k tokens; docs/notes/quant.md).
CALIBRATION_MAX_TOKENS = 512
#: Process input channels by decreasing Hessian diagonal (docs/notes/quant.md has the comparison).
ACT_ORDER = True
#: The Dense heads see one pooled row per text: too few for GPTQ (106 rows against K = 768 and 3072).
#: Means of this many random token windows of each calibration text (fixed seed) are added as
#: pooled rows; with them and HEAD_DAMP, GPTQ on the heads alone took their Q4_0 error on the parity
#: texts from 1 - cos 0.0045 (Hessian-weighted scale search) to 0.0017 (docs/notes/quant.md).
POOLED_WINDOWS_PER_TEXT = 60
#: GPTQ dampening for the heads: their window rows are correlated, so more damping generalises
#: better (0.01: 0.99819 mean, 0.1: 0.99834 on the parity texts, heads alone).
HEAD_DAMP = 0.1
#: The second head is quantized from weights that also undo the first head's quantization error
#: (``chained_head_weights``); its ridge, as a fraction of the mean Hessian diagonal, pulls the
#: corrected weights towards the original ones (0.001-0.01 measured alike; docs/notes/quant.md).
CHAIN_RIDGE = 0.01

# Per-format code range: Q8_0 codes are symmetric -127..127; Q4_0 codes are -8..7 (nibble - 8).
_QRANGE = {8: (-127, 127), 4: (-8, 7)}
# Scale candidates as "code the largest-magnitude weight m maps to": negative values map m onto the
# negative end (ggml Q4_0 itself uses -8), positive values onto the positive end.
_TARGETS = {
    4: np.array([-8.0, -7.75, -7.5, -7.25, -7.0, -6.75, -6.5, -6.0, -8.25, -8.5, -9.0,
                 7.0, 6.75, 6.5, 7.25, 7.5]),
    8: np.array([-127.0, -126.0, -125.0, -124.0, -122.0, -120.0, -128.0, -129.0, -131.0,
                 127.0, 126.0, 125.0, 124.0, 122.0]),
}


def load_calibration_texts(path: str | Path | None = None) -> list[str]:
    """The packaged calibration texts (or those in ``path``): a JSON list of strings or of {"text": ...}."""
    data = json.loads(Path(path or CALIBRATION_FILE).read_text(encoding="utf-8"))
    texts = [d["text"] if isinstance(d, dict) else d for d in data]
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise ValueError(f"{path or CALIBRATION_FILE} must be a non-empty list of non-empty texts")
    return texts


# ----------------------------------------------------------------------------------------------
# activation statistics


def collect_hessians(src, texts: list[str], threads: int | None = None, progress: bool = True,
                     max_tokens: int | None = None, absmax: dict[str, np.ndarray] | None = None,
                     ) -> tuple[dict[str, np.ndarray], dict[str, int], dict]:
    """``{activation name: X^T X}`` for every distinct MatMul input of the fp32 artifact ``src``.

    ``src`` is a ``quant.build.Fp32Source``. Each text runs once, bare or behind one of the
    artifact's prompts (taken in turn), so the statistics cover how the model is used; texts are cut
    at ``max_tokens`` (default ``CALIBRATION_MAX_TOKENS``). Texts of similar length share a batch
    (``runtime.batching.length_batches``, the runtime's rule); padding rows are left out of the
    statistics. Returns the Hessians (float64 [K, K], summed over rows), the number of rows behind
    each, and a description for the manifest.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from tokenizers import Tokenizer

    manifest = src.manifest
    sites = [s for s in src.sites if s.op == "MatMul"]
    acts = sorted({s.activation for s in sites}, key=[s.activation for s in sites].index)
    k_of = {s.activation: s.k for s in sites}
    model = onnx.load(str(src.folder / manifest["model_file"]), load_external_data=False)
    heads = _head_chain(model, src.sites)
    states = pooling_states(model, heads[0].activation) if heads else None
    first_head = None
    if states is not None:
        from .graph import read_initializer

        first_head = read_initializer(next(i for i in model.graph.initializer if i.name == heads[0].name),
                                      src.folder).astype(np.float32)
    rng = np.random.default_rng(0)

    tok = Tokenizer.from_file(str(src.folder / manifest["tokenizer_file"]))
    tok.no_padding()
    cut = min(int(max_tokens or CALIBRATION_MAX_TOKENS), int(manifest["max_seq_length"]))
    tok.enable_truncation(cut)
    prompts = [""] + sorted(set(manifest.get("prompts", {}).values()) - {""})
    inputs = [prompts[i % len(prompts)] + t for i, t in enumerate(texts)]
    encodings = tok.encode_batch(inputs)

    fetch = acts + ([states] if states else [])
    existing = {o.name for o in model.graph.output}
    for name in fetch:
        if name not in existing:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    hessians = {a: np.zeros((k_of[a], k_of[a]), np.float64) for a in acts}
    rows = dict.fromkeys(acts, 0)
    if absmax is not None:
        absmax.update({a: np.zeros(k_of[a], np.float32) for a in acts})
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # The graph refers to its weights by a relative file name; loading the edited graph from memory,
    # onnxruntime resolves that name in this folder (the input folder is never written to).
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(src.folder))
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    del model
    from .build import _progress_bar

    bar = _progress_bar(sum(len(e.ids) for e in encodings), "calibrating", progress, unit="token")
    pending: dict[str, list[np.ndarray]] = {a: [] for a in acts}

    def flush():
        # One X^T X per activation over many short texts: per-call overhead dominated otherwise.
        for name in acts:
            if pending[name]:
                x = np.concatenate(pending[name])
                hessians[name] += (x.T @ x).astype(np.float64)
                if absmax is not None:
                    np.maximum(absmax[name], np.abs(x).max(axis=0), out=absmax[name])
                rows[name] += x.shape[0]
                pending[name].clear()

    buffered = 0
    for batch in length_batches([len(e.ids) for e in encodings], max_rows=len(encodings),
                                max_tokens=CALIBRATION_BATCH_TOKENS):
        lengths = [len(encodings[i].ids) for i in batch]
        ids = np.zeros((len(batch), max(lengths)), np.int64)
        mask = np.zeros_like(ids)
        for r, (i, n) in enumerate(zip(batch, lengths)):
            ids[r, :n] = encodings[i].ids
            mask[r, :n] = 1
        outs = session.run(fetch, {"input_ids": ids, "attention_mask": mask})
        for name, x in zip(acts, outs):
            x = np.asarray(x, np.float32)
            # token rows: padding positions are dropped (attention never lets them reach real tokens,
            # so the kept rows equal those of each text run alone); views, copied once by flush();
            # pooled rows are one per text
            if x.ndim == 3:
                pending[name].extend(x[r, :n] for r, n in enumerate(lengths))
            else:
                pending[name].append(x.reshape(-1, k_of[name]))
        if states:
            hidden = np.asarray(outs[-1], np.float32)
            for r, n in enumerate(lengths):
                pooled = window_means(hidden[r, :n], POOLED_WINDOWS_PER_TEXT, rng)
                pending[heads[0].activation].append(pooled)
                if len(heads) > 1:   # the second head reads the first one's output: same rows through it
                    pending[heads[1].activation].append(pooled @ first_head)
        n_tokens = sum(lengths)
        buffered += n_tokens
        del outs
        if buffered >= _FLUSH_ROWS:
            flush()
            buffered = 0
        bar.update(n_tokens)
    flush()
    bar.close()
    del session
    info = {"texts": len(texts), "tokens": int(sum(len(e.ids) for e in encodings)),
            "prompts": "each text once: bare or behind one of the artifact's prompts, in turn",
            "max_tokens_per_text": cut,
            "texts_sha256": hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest(),
            "min_rows_per_weight": int(min(rows.values())), "damp": DAMP}
    if states:
        info["heads"] = {"pooled_windows_per_text": POOLED_WINDOWS_PER_TEXT, "damp": HEAD_DAMP,
                         "why": "one pooled row per text is too few for GPTQ on the Dense heads; means of random "
                                "token windows of each text (seed 0) are added"}
    return hessians, rows, info


def chained_head_weights(w1: np.ndarray, q1: np.ndarray, w2: np.ndarray, h1: np.ndarray,
                         ridge: float = CHAIN_RIDGE) -> tuple[np.ndarray, np.ndarray]:
    """Weights and Hessian for quantizing the second of two chained heads ``x @ w1 @ w2`` once the
    first is quantized (``q1``, its decoded values; all [K_in, N_out]; ``h1`` = X^T X of x).

    The second head's input is really ``x @ q1``, and its target is ``x @ w1 @ w2``. Least squares
    over the calibration rows, with a ridge towards ``w2``, gives the weights that map the one to the
    other: ``(A + r I)^-1 (B + r I) w2`` with ``A = q1^T h1 q1`` and ``B = q1^T h1 w1``, and ``A`` is
    the Hessian to quantize them with. The second head has 4x the first one's inputs, all linear in
    x, so it can undo almost all of the first one's error (docs/notes/quant.md).
    Returns ``(corrected w2 [K2, N2] float32, A [K2, K2] float64)``.
    """
    q1 = np.asarray(q1, np.float64)
    hq = np.asarray(h1, np.float64) @ q1
    a = q1.T @ hq                                          # (x q1)^T (x q1)
    b = hq.T @ np.asarray(w1, np.float64)                  # (x q1)^T (x w1)
    r = ridge * float(np.mean(np.diag(a)))
    w2 = np.asarray(w2, np.float64)
    lhs = a.copy()
    lhs[np.diag_indices(len(a))] += r
    return np.linalg.solve(lhs, b @ w2 + r * w2).astype(np.float32), a


def _head_chain(model, sites) -> list:
    """The projection-head sites in graph order (the first reads the pooled vector)."""
    heads = [s for s in sites if s.group == "projection" and s.op == "MatMul"]
    outputs = {n.name: n.output[0] for n in model.graph.node}
    first = [h for h in heads if h.activation not in {outputs.get(o.node_name) for o in heads}]
    if len(first) != 1:
        return []
    chain = first
    while True:
        nxt = [h for h in heads if h.activation == outputs.get(chain[-1].node_name)]
        if len(nxt) != 1:
            return chain
        chain.append(nxt[0])


def pooling_states(model, pooled: str) -> str | None:
    """Name of the [batch, tokens, hidden] tensor whose masked mean is ``pooled`` (the export's
    ``Div(ReduceSum(Where(mask, states, 0)), count)``), or None when the graph has another shape."""
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(pooled)
    for op, idx in (("Div", 0), ("ReduceSum", 0), ("Where", 1)):
        if node is None or node.op_type != op:
            return None
        name = node.input[idx]
        node = producer.get(name)
    return name


def window_means(x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``count`` random contiguous windows (uniform length 1..T, uniform start) of ``x`` [T, H]."""
    t = x.shape[0]
    csum = np.concatenate([np.zeros((1, x.shape[1]), np.float64), np.cumsum(x, axis=0, dtype=np.float64)])
    length = rng.integers(1, t + 1, count)
    start = rng.integers(0, t - length + 1)
    return ((csum[start + length] - csum[start]) / length[:, None]).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# value choice inside the format


def _codes(x: np.ndarray, d32: np.ndarray, bits: int) -> np.ndarray:
    """Nearest in-range codes (signed: Q4_0 as -8..7) of x for scales d (0 where d == 0).

    Used to score candidate scales; the stored codes are recomputed for the chosen scale (ties may
    round differently here, which only affects the score of exact ties).
    """
    lo, hi = _QRANGE[bits]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = np.where(d32 == 0, np.float32(0), np.float32(1) / d32)   # small: one per block and candidate
    y = x * inv
    np.rint(y, out=y)
    np.clip(y, lo, hi, out=y)
    return y


def search_scales(x: np.ndarray, bits: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Per-block float16 scales minimising the (weighted) squared error of ``x`` [..., nb, 32].

    Candidates put the block's largest-magnitude value on each code near either end of the range
    (the ggml choice is one of them, so the result is never worse than ggml's scale under the same
    rounding), each also refined once by weighted least squares for its codes; all are rounded to
    float16 before scoring, since that is what gets stored. ``weights`` broadcasts against ``x``
    (e.g. the Hessian diagonal of the block, [nb, 32]); None means plain squared error.
    """
    x = np.asarray(x, np.float32)
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    wflat = None if weights is None else np.broadcast_to(np.asarray(weights, np.float32), x.shape).reshape(flat.shape)
    targets = _TARGETS[bits].astype(np.float32)
    out = np.empty(flat.shape[0], np.float16)
    # All candidates at once on a [rows, candidates, 32] array; chunks keep it to ~16 MB.
    step = max(1, (1 << 22) // (len(targets) * flat.shape[1]))

    def search(s):
        xb = flat[s:s + step][:, None, :]                              # [B, 1, 32]
        wb = None if wflat is None else wflat[s:s + step][:, None, :]
        m = np.take_along_axis(xb[:, 0], np.abs(xb[:, 0]).argmax(axis=-1)[:, None], axis=-1)  # [B, 1]
        d = (m / targets).astype(np.float16).astype(np.float32)[..., None]                      # [B, C, 1]
        q = _codes(xb, d, bits)
        wq = q if wb is None else wb * q
        num = np.sum(wq * xb, axis=-1, keepdims=True)
        den = np.sum(wq * q, axis=-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            d_ls = np.where(den > 0, num / den, d).astype(np.float16).astype(np.float32)
        d_ls[~np.isfinite(d_ls)] = 0
        cand = np.concatenate([d, d_ls], axis=1)                      # [B, 2C, 1]
        r = xb - _codes(xb, cand, bits) * cand
        err = np.sum(r * r if wb is None else wb * r * r, axis=-1)    # [B, 2C]
        # ties go to the earliest candidate, i.e. ggml's own scale first
        out[s:s + step] = np.take_along_axis(cand[..., 0], err.argmin(axis=1)[:, None], axis=1)[:, 0]

    starts = range(0, flat.shape[0], step)
    if len(starts) == 1:
        search(0)
    else:
        # numpy releases the GIL in these array operations: chunks on all cores (2.8x faster on a
        # 40,000 x 768 matrix with 2 cores, same output; docs/notes/quant.md)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(search, starts))
    return out.reshape(lead)


def quantize_with_scales(w: np.ndarray, d16: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes for chosen float16 scales in ``quant.formats`` conventions (int8 for Q8_0, nibbles for Q4_0)."""
    return F.quantizer(bits)(w, d=d16)


def scale_search_quantize(w: np.ndarray, bits: int, weights: np.ndarray | None = None,
                          rows_per_chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Quantize ``w`` [rows, cols] with ``search_scales`` per block (row chunks bound the memory)."""
    rows, cols = w.shape
    nb = cols // F.BLOCK_SIZE
    d16 = np.empty((rows, nb), np.float16)
    wts = None if weights is None else np.asarray(weights, np.float32).reshape(nb, F.BLOCK_SIZE)
    for s in range(0, rows, rows_per_chunk):
        e = min(rows, s + rows_per_chunk)
        x = np.asarray(w[s:e], np.float32).reshape(e - s, nb, F.BLOCK_SIZE)
        d16[s:e] = search_scales(x, bits, wts)
    return quantize_with_scales(w, d16, bits)


@dataclass(frozen=True)
class GptqFactor:
    """Per-layer-input data shared by every weight that reads the input (q/k/v, gate/up) and by every
    recipe of one run: the processing order, the upper Cholesky factor of the dampened inverse
    Hessian in that order, the dampened diagonal (block-scale weights) and the inputs that never fired."""

    u: np.ndarray             # float32 [K, K], upper triangular, rows/columns in processing order
    diag: np.ndarray          # float32 [K], original order
    dead: np.ndarray          # bool [K]
    perm: np.ndarray | None   # processing order (None = natural order)
    hessian: np.ndarray       # float32 [K, K], dampened, original order (for the scale refit)


def gptq_factor(hessian: np.ndarray, damp: float = DAMP, act_order: bool = ACT_ORDER) -> GptqFactor:
    """Prepare ``gptq_quantize`` for one layer input from ``H = X^T X`` [K, K].

    ``act_order`` processes input channels by decreasing ``H_kk`` (the most sensitive first, while
    many columns are still free to absorb their error); otherwise in natural order.
    """
    h = np.array(hessian, np.float64, copy=True)
    k = h.shape[0]
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices(k)] += damp * np.mean(np.diag(h))
    diag = np.diag(h).astype(np.float32)
    dampened = h.astype(np.float32)
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else None
    if perm is not None:
        h = h[np.ix_(perm, perm)]
    # U is the upper Cholesky factor of H^-1 (H^-1 = U^T U); row i holds how column i's rounding
    # error spreads to the columns after it. With J the reversal, J H J = L L^T gives H = R R^T for
    # the upper triangular R = J L J, so U = R^-1 = J L^-1 J: one Cholesky and one inverse.
    lower = np.linalg.cholesky(h[::-1, ::-1])
    u = np.triu(np.linalg.inv(lower)[::-1, ::-1]).astype(np.float32)
    return GptqFactor(u, diag, dead, perm, dampened)


def gptq_quantize(w: np.ndarray, bits: int, hessian: np.ndarray | None = None, damp: float = DAMP,
                  factor: GptqFactor | None = None, act_order: bool = ACT_ORDER,
                  batch: int = GPTQ_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ for ggml blocks: ``w`` [N_out, K_in] float32, ``hessian`` [K, K] = X^T X of the layer input
    (or its precomputed ``gptq_factor``, which then fixes damping and order).

    Columns are quantized one at a time and each one's rounding error is fed back into the columns
    not yet quantized. Block scales are first chosen by ``search_scales`` weighted with the Hessian
    diagonal: in natural order when the block starts, from the error-updated weights; in act order
    up front, from the original weights (a block's columns are scattered through the order). Then
    ``refit_block_scales`` re-solves the scales for the chosen codes (a second GPTQ pass with those
    scales fitted the calibration texts better but the parity texts worse: docs/notes/quant.md).
    Returns ``(codes, float16 scales)`` in ``quant.formats`` conventions (int8 codes for Q8_0,
    nibbles 0..15 for Q4_0), which decode exactly as the format says.
    """
    n, k = w.shape
    if k % F.BLOCK_SIZE or batch % F.BLOCK_SIZE:
        raise ValueError(f"K={k} and batch={batch} must be multiples of {F.BLOCK_SIZE}")
    f = factor if factor is not None else gptq_factor(hessian, damp, act_order)
    if f.u.shape != (k, k):
        raise ValueError(f"Hessian factor has shape {f.u.shape}, expected {(k, k)}")
    W = np.array(w, np.float32, copy=True)
    W[:, f.dead] = 0.0
    codes, d16 = _gptq_pass(W, bits, f, batch)
    d16 = refit_block_scales(W, codes, d16, f.hessian)
    if bits == 4:
        return (codes + 8).astype(np.uint8), d16
    return codes, d16


def _gptq_pass(W: np.ndarray, bits: int, f: GptqFactor, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """One GPTQ pass over ``W`` [N, K] (not modified): signed codes [N, K] in the original column
    order and float16 block scales."""
    n, k = W.shape
    nb = k // F.BLOCK_SIZE
    static = f.perm is not None
    if static:
        d16 = search_scales(W.reshape(n, nb, F.BLOCK_SIZE), bits, f.diag.reshape(nb, F.BLOCK_SIZE))
        W = W[:, f.perm]
    else:
        d16 = np.empty((n, nb), np.float16)
        W = W.copy()
    order = f.perm if static else np.arange(k)
    u = f.u
    lo, hi = _QRANGE[bits]
    codes = np.empty((n, k), np.int8)   # in processing order
    scale = inv = None
    for b0 in range(0, k, batch):
        b1 = min(k, b0 + batch)
        w1 = W[:, b0:b1].copy()
        err1 = np.zeros_like(w1)
        for i in range(b1 - b0):
            j = b0 + i
            col = order[j]
            if static:
                scale = d16[:, col // F.BLOCK_SIZE].astype(np.float32)
            elif col % F.BLOCK_SIZE == 0:
                d16[:, col // F.BLOCK_SIZE] = search_scales(w1[:, i:i + F.BLOCK_SIZE], bits,
                                                            f.diag[col:col + F.BLOCK_SIZE])
                scale = d16[:, col // F.BLOCK_SIZE].astype(np.float32)
            if static or col % F.BLOCK_SIZE == 0:
                with np.errstate(divide="ignore"):
                    inv = np.where(scale == 0, np.float32(0), np.float32(1) / scale)
            x = w1[:, i]
            y = x * inv
            q = np.clip(np.floor(np.abs(y) + np.float32(0.5)) * np.sign(y), lo, hi)
            codes[:, j] = q
            e = (x - q * scale) / u[j, j]
            w1[:, i + 1:] -= np.outer(e, u[j, j + 1:b1])
            err1[:, i] = e
        W[:, b1:] -= err1 @ u[b0:b1, b1:]
    if static:
        unperm = np.empty_like(codes)
        unperm[:, f.perm] = codes
        codes = unperm
    return codes, d16


def refit_block_scales(w: np.ndarray, codes: np.ndarray, d16: np.ndarray, hessian: np.ndarray,
                       chunk_bytes: int = 1 << 25) -> np.ndarray:
    """Float16 block scales minimising ``(w - decode) H (w - decode)^T`` per row for fixed signed
    ``codes`` [N, K] (``w`` [N, K], ``d16`` [N, K/32] the current scales, ``H`` [K, K]).

    With the codes fixed the output error is a quadratic in the row's block scales,
    ``w H w^T - 2 r.d + d^T M d`` with ``M[b, c] = q_b H_bc q_c`` and ``r[b] = q_b H_b w``, so one
    linear solve of K/32 unknowns per row finds them (GPTQ chose them before the codes existed). The
    new scales are rounded to float16, as stored; a row keeps its old scales where rounding (or a
    singular system) would make it worse, so the result is never worse than ``d16`` under ``H``.
    Blocks whose codes are all zero keep their scale (it multiplies nothing).
    """
    n, k = w.shape
    nb = k // F.BLOCK_SIZE
    h = np.asarray(hessian, np.float32)
    out = np.array(d16, np.float16, copy=True)
    rows = max(1, chunk_bytes // (4 * k * 2))
    idx = np.arange(nb)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        q = codes[s:e].astype(np.float32)
        x = np.asarray(w[s:e], np.float32)
        qb = q.reshape(e - s, nb, F.BLOCK_SIZE)
        m = np.empty((e - s, nb, nb))
        r = np.empty((e - s, nb))
        for b in range(nb):
            cols = slice(b * F.BLOCK_SIZE, (b + 1) * F.BLOCK_SIZE)
            p = q[:, cols] @ h[cols]                                   # [rows, K]: q_b^T H_b,:
            m[:, b] = np.einsum("rcj,rcj->rc", p.reshape(e - s, nb, F.BLOCK_SIZE), qb)
            r[:, b] = np.einsum("rk,rk->r", p, x)
        empty = ~qb.any(axis=-1)
        m[:, idx, idx] += empty
        r[empty] = 0.0
        with np.errstate(all="ignore"):
            try:
                d = np.linalg.solve(m, r[..., None])[..., 0]
            except np.linalg.LinAlgError:
                continue
        old = out[s:e].astype(np.float64)
        new = np.where(empty | ~np.isfinite(d), old, d).astype(np.float16)
        new = np.where(np.isfinite(new), new, out[s:e])
        # the quadratic without its constant w H w^T: enough to compare two sets of scales
        def cost(dd):
            dd = dd.astype(np.float64)
            return np.einsum("rb,rbc,rc->r", dd, m, dd) - 2 * np.einsum("rb,rb->r", r, dd)
        better = cost(new) < cost(old)
        out[s:e][better] = new[better]
    return out


def gptq_quantize_per_channel(w: np.ndarray, factor: GptqFactor, scales: np.ndarray, qmax: int = 127,
                              batch: int = GPTQ_BATCH) -> np.ndarray:
    """GPTQ with one fixed scale per output row: ``w`` [N_out, K_in] float32, ``scales`` [N_out].

    The integer path's weights (``quant.int8_path``): symmetric codes -qmax..qmax, value
    ``code * scale``. Same error feedback as ``gptq_quantize``; the scales are chosen up front, so
    every column uses its row's scale. Returns int8 codes [N_out, K_in].
    """
    n, k = w.shape
    if factor.u.shape != (k, k):
        raise ValueError(f"Hessian factor has shape {factor.u.shape}, expected {(k, k)}")
    W = np.array(w, np.float32, copy=True)
    W[:, factor.dead] = 0.0
    if factor.perm is not None:
        W = W[:, factor.perm]
    scale = np.asarray(scales, np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(scale == 0, np.float32(0), np.float32(1) / scale)
    u = factor.u
    codes = np.empty((n, k), np.int8)
    for b0 in range(0, k, batch):
        b1 = min(k, b0 + batch)
        w1 = W[:, b0:b1].copy()
        err1 = np.zeros_like(w1)
        for i in range(b1 - b0):
            j = b0 + i
            q = np.clip(np.rint(w1[:, i] * inv), -qmax, qmax)
            codes[:, j] = q
            e = (w1[:, i] - q * scale) / u[j, j]
            w1[:, i + 1:] -= np.outer(e, u[j, j + 1:b1])
            err1[:, i] = e
        W[:, b1:] -= err1 @ u[b0:b1, b1:]
    if factor.perm is not None:
        unperm = np.empty_like(codes)
        unperm[:, factor.perm] = codes
        codes = unperm
    return codes
