"""GPTQ for ggml blocks: the least-squares refit of block scales, checked against a direct solve."""
from __future__ import annotations

import numpy as np
import pytest

from quant.formats import FORMATS
from quant.gptq import _gptq_pass, chained_head_weights, gptq_factor, gptq_quantize, refit_block_scales

Q4_0 = FORMATS["Q4_0"]


def _problem(seed=0, n=6, k=96, rows=400):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, k)).astype(np.float32) * rng.uniform(0.2, 3.0, k).astype(np.float32)
    x[:, 5] += 2.0 * x[:, 40]                          # correlated inputs: off-diagonal Hessian terms matter
    w = rng.standard_normal((n, k)).astype(np.float32)
    return w, (x.T @ x).astype(np.float64)


def _error(w, codes, d16, h):
    dec = (codes.reshape(w.shape[0], -1, 32) * d16.astype(np.float64)[..., None]).reshape(w.shape)
    diff = w - dec
    return np.einsum("nk,kl,nl->n", diff, h, diff)


def test_refit_equals_a_direct_least_squares_solve():
    w, h = _problem()
    codes, d16 = _gptq_pass(w, Q4_0, gptq_factor(h), 32)
    new = refit_block_scales(w, codes, d16, h)
    # Independent formulation: min || L^T (w - Q d) || with H = L L^T and Q the [K, blocks] design.
    chol = np.linalg.cholesky(h)
    compared = 0
    for r in range(w.shape[0]):
        design = np.zeros((w.shape[1], w.shape[1] // 32))
        for b in range(design.shape[1]):
            design[b * 32:(b + 1) * 32, b] = codes[r, b * 32:(b + 1) * 32]
        d, *_ = np.linalg.lstsq(chol.T @ design, chol.T @ w[r].astype(np.float64), rcond=None)
        expect = d.astype(np.float16)
        # float16 rounding of the solution; a row keeps its old scales only if rounding made it worse
        if _error(w[r:r + 1], codes[r:r + 1], expect[None], h)[0] < _error(w[r:r + 1], codes[r:r + 1], d16[r:r + 1], h)[0]:
            np.testing.assert_array_equal(new[r], expect)
            compared += 1
    assert compared >= w.shape[0] - 1


def test_refit_with_identity_hessian_is_the_per_block_projection():
    w, _ = _problem(1)
    codes = np.clip(np.rint(w / 0.4), -8, 7).astype(np.int8)
    d16 = np.full((w.shape[0], w.shape[1] // 32), 0.4, np.float16)
    new = refit_block_scales(w, codes, d16, np.eye(w.shape[1]))
    qb, wb = codes.reshape(w.shape[0], -1, 32).astype(np.float64), w.reshape(w.shape[0], -1, 32).astype(np.float64)
    np.testing.assert_array_equal(new, (np.sum(qb * wb, -1) / np.sum(qb * qb, -1)).astype(np.float16))


def test_refit_never_worsens_and_keeps_blocks_without_codes():
    w, h = _problem(2)
    codes, d16 = _gptq_pass(w, Q4_0, gptq_factor(h), 32)
    codes[0, :32] = 0                                   # a block with no code: its scale stays
    new = refit_block_scales(w, codes, d16, h)
    assert new[0, 0] == d16[0, 0]
    assert np.all(_error(w, codes, new, h) <= _error(w, codes, d16, h))
    assert np.sum(_error(w, codes, new, h)[1:]) < 0.99 * np.sum(_error(w, codes, d16, h)[1:])


@pytest.mark.parametrize("name", list(FORMATS))
def test_gptq_output_is_in_format_and_refitted(name):
    fmt = FORMATS[name]
    w, h = _problem(3, n=16, k=128)
    f = gptq_factor(h)
    codes, d16 = gptq_quantize(w, fmt, factor=f)
    assert codes.dtype == fmt.code_dtype
    signed = fmt.signed(codes).astype(np.int16)
    assert signed.min() >= fmt.qmin and signed.max() <= fmt.qmax
    assert d16.dtype == np.float16 and np.all(np.isfinite(d16))
    # what the format decodes is what the refit optimised: the unrefitted pass is worse on it
    dec = fmt.dequantize(codes, d16)
    raw_codes, raw_d16 = _gptq_pass(w, fmt, f, 32)
    np.testing.assert_array_equal(raw_codes, signed)
    diff = w - dec.reshape(w.shape)
    assert np.einsum("nk,kl,nl->", diff, h, diff) < np.sum(_error(w, raw_codes, raw_d16, h))


def test_chained_head_weights_undo_the_first_heads_error():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3000, 32)) @ rng.standard_normal((32, 32))      # pooled rows [rows, K1]
    w1 = rng.standard_normal((32, 128)) / 6                                   # [K1, N1]: 4x wider, like the heads
    w2 = rng.standard_normal((128, 32)) / 11                                  # [N1, N2]
    h1 = x.T @ x
    # no error to undo: the weights come back unchanged
    same, a = chained_head_weights(w1, w1, w2, h1)
    np.testing.assert_allclose(same, w2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a, w1.T @ h1 @ w1, rtol=1e-9)
    # a quantized first head: the corrected second head removes almost all of its error
    q1 = Q4_0.dequantize(*Q4_0.quantize(np.ascontiguousarray(w1.T.astype(np.float32)))).reshape(128, 32).T
    fixed, _ = chained_head_weights(w1, q1, w2, h1, ridge=1e-6)
    target = x @ w1 @ w2
    before = np.linalg.norm(x @ q1 @ w2 - target)
    after = np.linalg.norm(x @ q1 @ fixed - target)
    assert after < 0.01 * before, (after, before)
    # and it is the least-squares solution, computed here the direct way
    ls, *_ = np.linalg.lstsq(x @ q1, target, rcond=None)
    np.testing.assert_allclose(x @ q1 @ fixed, x @ q1 @ ls, atol=1e-3 * np.abs(target).max())
