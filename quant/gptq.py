"""Calibrated choice of stored values inside a ggml block format: GPTQ and the scale search.

Nothing here changes the format: every block still holds one float16 scale and codes in the
format's range (``quant.formats``), so onnxruntime decodes them exactly as ggml would. Only which
codes and scales are stored changes:

* ``gptq_quantize`` is GPTQ (Frantar et al., 2022) adapted to ggml blocks: columns are quantized
  one at a time along K, most sensitive first (act order), and each column's rounding error is fed
  back into the columns not yet quantized through the inverse Hessian; block scales come from
  ``search_scales`` weighted with the Hessian diagonal, then ``refit_block_scales`` re-solves them
  for the chosen codes.
* ``search_scales`` picks, per block, the float16 scale among the format's candidates that
  minimises ``sum_k w_k (x_k - dequant_k)^2`` (``w_k = 1`` for the token table, which sees no
  activations).
* ``chained_head_weights`` lets the second Dense head undo the first one's quantization error.

numpy only.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .formats import BLOCK_SIZE, BlockFormat

#: GPTQ dampening, as a fraction of the mean Hessian diagonal (the GPTQ paper's default).
DAMP = 0.01
#: Columns per lazy-update batch in GPTQ (a multiple of the 32-weight block).
GPTQ_BATCH = 128
#: GPTQ dampening for the Dense heads: their pooled-window rows are correlated, so more damping
#: generalises better (docs/notes/quant.md).
HEAD_DAMP = 0.1
#: Ridge of ``chained_head_weights``, as a fraction of the mean Hessian diagonal: pulls the
#: corrected weights towards the original ones (docs/notes/quant.md).
CHAIN_RIDGE = 0.01


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


def _codes(x: np.ndarray, d32: np.ndarray, fmt: BlockFormat) -> np.ndarray:
    """Nearest in-range signed codes of x for scales d (0 where d == 0).

    Used to score candidate scales; the stored codes are recomputed for the chosen scale (ties may
    round differently here, which only affects the score of exact ties).
    """
    lo, hi = fmt.qmin, fmt.qmax
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = np.where(d32 == 0, np.float32(0), np.float32(1) / d32)   # small: one per block and candidate
    y = x * inv
    np.rint(y, out=y)
    np.clip(y, lo, hi, out=y)
    return y


def search_scales(x: np.ndarray, fmt: BlockFormat, weights: np.ndarray | None = None) -> np.ndarray:
    """Per-block float16 scales minimising the (weighted) squared error of ``x`` [..., nb, 32].

    Candidates (``fmt.scale_targets``) put the block's largest-magnitude value on each code near
    either end of the range
    (the ggml choice is one of them, so the result is never worse than ggml's scale under the same
    rounding), each also refined once by weighted least squares for its codes; all are rounded to
    float16 before scoring, since that is what gets stored. ``weights`` broadcasts against ``x``
    (e.g. the Hessian diagonal of the block, [nb, 32]); None means plain squared error.
    """
    x = np.asarray(x, np.float32)
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    wflat = None if weights is None else np.broadcast_to(np.asarray(weights, np.float32), x.shape).reshape(flat.shape)
    targets = np.asarray(fmt.scale_targets, np.float32)
    out = np.empty(flat.shape[0], np.float16)
    # All candidates at once on a [rows, candidates, 32] array; chunks keep it to ~16 MB.
    step = max(1, (1 << 22) // (len(targets) * flat.shape[1]))

    def search(s):
        xb = flat[s:s + step][:, None, :]                              # [B, 1, 32]
        wb = None if wflat is None else wflat[s:s + step][:, None, :]
        m = np.take_along_axis(xb[:, 0], np.abs(xb[:, 0]).argmax(axis=-1)[:, None], axis=-1)  # [B, 1]
        d = (m / targets).astype(np.float16).astype(np.float32)[..., None]                      # [B, C, 1]
        q = _codes(xb, d, fmt)
        wq = q if wb is None else wb * q
        num = np.sum(wq * xb, axis=-1, keepdims=True)
        den = np.sum(wq * q, axis=-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            d_ls = np.where(den > 0, num / den, d).astype(np.float16).astype(np.float32)
        d_ls[~np.isfinite(d_ls)] = 0
        cand = np.concatenate([d, d_ls], axis=1)                      # [B, 2C, 1]
        r = xb - _codes(xb, cand, fmt) * cand
        err = np.sum(r * r if wb is None else wb * r * r, axis=-1)    # [B, 2C]
        # ties go to the earliest candidate, i.e. ggml's own scale first
        out[s:s + step] = np.take_along_axis(cand[..., 0], err.argmin(axis=1)[:, None], axis=1)[:, 0]

    starts = range(0, flat.shape[0], step)
    if len(starts) == 1:
        search(0)
    else:
        # numpy releases the GIL in these array operations: chunks on all cores, same output
        # (docs/notes/quant.md)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(search, starts))
    return out.reshape(lead)


def scale_search_quantize(w: np.ndarray, fmt: BlockFormat, weights: np.ndarray | None = None,
                          rows_per_chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Quantize ``w`` [rows, cols] with ``search_scales`` per block (row chunks bound the memory);
    codes and float16 scales in ``fmt``'s convention."""
    rows, cols = w.shape
    nb = cols // BLOCK_SIZE
    d16 = np.empty((rows, nb), np.float16)
    wts = None if weights is None else np.asarray(weights, np.float32).reshape(nb, BLOCK_SIZE)
    for s in range(0, rows, rows_per_chunk):
        e = min(rows, s + rows_per_chunk)
        x = np.asarray(w[s:e], np.float32).reshape(e - s, nb, BLOCK_SIZE)
        d16[s:e] = search_scales(x, fmt, wts)
    return fmt.quantize(w, d=d16)


@dataclass(frozen=True)
class GptqFactor:
    """Per-layer-input data shared by every weight that reads the input (q/k/v, gate/up) and by every
    recipe of one run: the processing order, the upper Cholesky factor of the dampened inverse
    Hessian in that order, the dampened diagonal (block-scale weights) and the inputs that never fired."""

    u: np.ndarray             # float32 [K, K], upper triangular, rows/columns in processing order
    diag: np.ndarray          # float32 [K], original order
    dead: np.ndarray          # bool [K]
    perm: np.ndarray          # processing order (act order: decreasing Hessian diagonal)
    hessian: np.ndarray       # float32 [K, K], dampened, original order (for the scale refit)


def gptq_factor(hessian: np.ndarray, damp: float = DAMP) -> GptqFactor:
    """Prepare ``gptq_quantize`` for one layer input from ``H = X^T X`` [K, K].

    Input channels are processed by decreasing ``H_kk`` (act order: the most sensitive first, while
    many columns are still free to absorb their error; docs/notes/quant.md has the comparison).
    """
    h = np.array(hessian, np.float64, copy=True)
    k = h.shape[0]
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices(k)] += damp * np.mean(np.diag(h))
    diag = np.diag(h).astype(np.float32)
    dampened = h.astype(np.float32)
    perm = np.argsort(-np.diag(h), kind="stable")
    h = h[np.ix_(perm, perm)]
    # U is the upper Cholesky factor of H^-1 (H^-1 = U^T U); row i holds how column i's rounding
    # error spreads to the columns after it. With J the reversal, J H J = L L^T gives H = R R^T for
    # the upper triangular R = J L J, so U = R^-1 = J L^-1 J: one Cholesky and one inverse.
    lower = np.linalg.cholesky(h[::-1, ::-1])
    u = np.triu(np.linalg.inv(lower)[::-1, ::-1]).astype(np.float32)
    return GptqFactor(u, diag, dead, perm, dampened)


def gptq_quantize(w: np.ndarray, fmt: BlockFormat, hessian: np.ndarray | None = None, damp: float = DAMP,
                  factor: GptqFactor | None = None, batch: int = GPTQ_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ for ggml blocks: ``w`` [N_out, K_in] float32, ``hessian`` [K, K] = X^T X of the layer input
    (or its precomputed ``gptq_factor``, which then fixes damping and order).

    Columns are quantized one at a time and each one's rounding error is fed back into the columns
    not yet quantized. Block scales are first chosen by ``search_scales`` weighted with the Hessian
    diagonal, up front from the original weights (in act order a block's columns are scattered
    through the order). Then
    ``refit_block_scales`` re-solves the scales for the chosen codes (a second GPTQ pass with those
    scales fitted the calibration texts better but the parity texts worse: docs/notes/quant.md).
    Returns ``(codes, float16 scales)`` in ``fmt``'s convention, which decode exactly as the format says.
    """
    n, k = w.shape
    if k % BLOCK_SIZE or batch % BLOCK_SIZE:
        raise ValueError(f"K={k} and batch={batch} must be multiples of {BLOCK_SIZE}")
    f = factor if factor is not None else gptq_factor(hessian, damp)
    if f.u.shape != (k, k):
        raise ValueError(f"Hessian factor has shape {f.u.shape}, expected {(k, k)}")
    W = np.array(w, np.float32, copy=True)
    W[:, f.dead] = 0.0
    codes, d16 = _gptq_pass(W, fmt, f, batch)
    d16 = refit_block_scales(W, codes, d16, f.hessian)
    return fmt.from_signed(codes), d16


def gptq_quantize_together(weights_t: list[np.ndarray], fmt: BlockFormat, factor: GptqFactor) -> list[tuple[np.ndarray, np.ndarray]]:
    """GPTQ of several weights [K_in, N_i] that read the same input, in one pass (their rows share the
    Hessian's ``factor``), split back per weight as ``(codes [N_i, K_in], float16 scales)``."""
    q, d = gptq_quantize(np.concatenate([np.asarray(w, dtype=np.float32).T for w in weights_t]), fmt, factor=factor)
    bounds = np.cumsum([0] + [w.shape[1] for w in weights_t])
    return [(q[a:b], d[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _gptq_pass(W: np.ndarray, fmt: BlockFormat, f: GptqFactor, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """One GPTQ pass over ``W`` [N, K] (not modified): signed codes [N, K] in the original column
    order and float16 block scales."""
    n, k = W.shape
    nb = k // BLOCK_SIZE
    d16 = search_scales(W.reshape(n, nb, BLOCK_SIZE), fmt, f.diag.reshape(nb, BLOCK_SIZE))

    def column(j: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scale = d16[:, f.perm[j] // BLOCK_SIZE].astype(np.float32)
        with np.errstate(divide="ignore"):
            inv = np.where(scale == 0, np.float32(0), np.float32(1) / scale)
        y = x * inv
        return np.clip(np.floor(np.abs(y) + np.float32(0.5)) * np.sign(y), fmt.qmin, fmt.qmax), scale

    return _error_feedback(W[:, f.perm], f, batch, column), d16


def _error_feedback(W: np.ndarray, f: GptqFactor, batch: int, column) -> np.ndarray:
    """GPTQ's loop: the columns of ``W`` [N, K] (in processing order; updated in place) one at a time,
    each quantized by ``column(j, x) -> (codes, scales)`` and its rounding error fed into the columns
    not yet quantized through ``f.u``, lazily in batches of ``batch`` columns. Returns int8 codes in
    the original column order."""
    n, k = W.shape
    u = f.u
    codes = np.empty((n, k), np.int8)   # in processing order
    for b0 in range(0, k, batch):
        b1 = min(k, b0 + batch)
        w1 = W[:, b0:b1].copy()
        err1 = np.zeros_like(w1)
        for i in range(b1 - b0):
            j = b0 + i
            x = w1[:, i]
            q, scale = column(j, x)
            codes[:, j] = q
            e = (x - q * scale) / u[j, j]
            w1[:, i + 1:] -= np.outer(e, u[j, j + 1:b1])
            err1[:, i] = e
        W[:, b1:] -= err1 @ u[b0:b1, b1:]
    unperm = np.empty_like(codes)
    unperm[:, f.perm] = codes
    return unperm


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
    nb = k // BLOCK_SIZE
    h = np.asarray(hessian, np.float32)
    out = np.array(d16, np.float16, copy=True)
    rows = max(1, chunk_bytes // (4 * k * 2))
    idx = np.arange(nb)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        q = codes[s:e].astype(np.float32)
        x = np.asarray(w[s:e], np.float32)
        qb = q.reshape(e - s, nb, BLOCK_SIZE)
        m = np.empty((e - s, nb, nb))
        r = np.empty((e - s, nb))
        for b in range(nb):
            cols = slice(b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE)
            p = q[:, cols] @ h[cols]                                   # [rows, K]: q_b^T H_b,:
            m[:, b] = np.einsum("rcj,rcj->rc", p.reshape(e - s, nb, BLOCK_SIZE), qb)
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
        better = _scale_cost(new, m, r) < _scale_cost(old, m, r)
        out[s:e][better] = new[better]
    return out


def _scale_cost(d: np.ndarray, m: np.ndarray, r: np.ndarray) -> np.ndarray:
    """The refit's quadratic without its constant ``w H w^T``: enough to compare two sets of scales."""
    d = d.astype(np.float64)
    return np.einsum("rb,rbc,rc->r", d, m, d) - 2 * np.einsum("rb,rb->r", r, d)


def gptq_quantize_per_channel(w: np.ndarray, factor: GptqFactor, scales: np.ndarray, qmax: int = 127,
                              batch: int = GPTQ_BATCH) -> np.ndarray:
    """GPTQ with one fixed scale per output row: ``w`` [N_out, K_in] float32, ``scales`` [N_out].

    The integer path's weights (``quant.int8_path``): symmetric codes -qmax..qmax, value
    ``code * scale``. Same error feedback as ``gptq_quantize``; the scales are chosen up front, so
    every column uses its row's scale. Returns int8 codes [N_out, K_in].
    """
    k = w.shape[1]
    if factor.u.shape != (k, k):
        raise ValueError(f"Hessian factor has shape {factor.u.shape}, expected {(k, k)}")
    W = np.array(w, np.float32, copy=True)
    W[:, factor.dead] = 0.0
    scale = np.asarray(scales, np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(scale == 0, np.float32(0), np.float32(1) / scale)
    return _error_feedback(W[:, factor.perm], factor, batch,
                           lambda j, x: (np.clip(np.rint(x * inv), -qmax, qmax), scale))
