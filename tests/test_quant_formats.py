"""quant.formats and quant.packing against independent references, for every registered format.

* gguf's numpy quantizers (gguf.quants) for the ggml bytes, and
* onnxruntime's CPU kernels (MatMulNBits, and the standard ops quant.graph writes) for the encodings:
  whatever the graph decodes must equal gguf.quants.dequantize of the gguf bytes, bit for bit.

The real-checkpoint tests run only with EMBEDDINGGEMMA_DIR set (marker ``real_model``).
"""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from quant import formats as F
from quant import packing as P

gguf_quants = pytest.importorskip("gguf.quants")
from gguf import GGMLQuantizationType as QT  # noqa: E402

#: Every registered format is checked against gguf: a new format gets these tests by its definition.
FORMATS = list(F.FORMATS)
NBITS_FORMATS = [name for name, f in F.FORMATS.items() if f.matmulnbits]


def fmt_of(name: str) -> F.BlockFormat:
    return F.FORMATS[name]


# ---------------------------------------------------------------------------------------------
# reference side: gguf bytes parsed here, independently of quant.formats


def parse_ggml_blocks(raw: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes in quant.formats' convention, float16 scales) from ggml block bytes, by ggml's layouts:
    Q8_0 = d + 32 int8; Q4_0 = d + 16 bytes, byte j = element j (low nibble) and j + 16 (high);
    Q5_0 = d + 4 bytes of high bits (bit j = bit 4 of element j, little-endian) + Q4_0's nibbles."""
    size = {"Q8_0": 34, "Q4_0": 18, "Q5_0": 22}[name]
    rows = raw.reshape(-1, raw.shape[-1])
    blocks = rows.reshape(rows.shape[0], -1, size)
    d = blocks[..., :2].copy().view("<f2")[..., 0]
    if name == "Q8_0":
        q = blocks[..., 2:].copy().view(np.int8)
    else:
        nibbles = blocks[..., -16:]
        q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1)
        if name == "Q5_0":
            high = np.unpackbits(blocks[..., 2:6].copy(), axis=-1, bitorder="little")
            q = q | (high << 4)
    return q.reshape(rows.shape[0], -1), d


def gguf_codes_and_scales(w: np.ndarray, name: str):
    """(raw gguf bytes, codes, float16 scales) from gguf, parsed with this file's own layout reader."""
    raw = gguf_quants.quantize(w, getattr(QT, name))
    q, d = parse_ggml_blocks(raw, name)
    return raw, q.reshape(w.shape), d.reshape(*w.shape[:-1], -1)


def gguf_dequantized(w: np.ndarray, name: str) -> np.ndarray:
    return gguf_quants.dequantize(gguf_quants.quantize(w, getattr(QT, name)), getattr(QT, name))


def assert_bit_exact(w: np.ndarray, name: str):
    fmt = fmt_of(name)
    raw, q_ref, d_ref = gguf_codes_and_scales(w, name)
    q, d = fmt.quantize(w)
    assert q.dtype == fmt.code_dtype and d.dtype == np.float16
    assert q.shape == w.shape and d.shape == (*w.shape[:-1], w.shape[-1] // 32)
    np.testing.assert_array_equal(q, q_ref)
    # scales compared as bit patterns, so -0.0 vs 0.0 or a different NaN would be caught too
    np.testing.assert_array_equal(d.view(np.uint16), d_ref.astype("<f2").view(np.uint16))
    with np.errstate(invalid="ignore"):  # inf scales (huge blocks) decode to nan in both
        deq = fmt.dequantize(q, d)
        ref = gguf_quants.dequantize(raw, getattr(QT, name))
    assert deq.dtype == np.float32
    np.testing.assert_array_equal(deq, ref)  # nan == nan here


# ---------------------------------------------------------------------------------------------
# awkward data


def awkward_matrix(seed: int = 0, cols: int = 256) -> np.ndarray:
    """Rows of 32-blocks covering the corner cases, then random rows over many magnitudes."""
    rng = np.random.default_rng(seed)
    nb = cols // 32
    blocks: list[np.ndarray] = []

    def add(b):
        blocks.append(np.asarray(b, np.float32).reshape(32))

    add(np.zeros(32))                                   # all-zero block
    add(-np.zeros(32))                                  # negative zeros
    b = np.zeros(32); b[7] = 3.0; add(b)                # single non-zero
    b = np.zeros(32); b[31] = -5e-3; add(b)             # single negative, fp16-subnormal scale
    b = rng.standard_normal(32); b[4] = -10; add(b)     # largest magnitude negative
    b = rng.standard_normal(32); b[4] = 10; b[20] = -10; add(b)   # +/- tie for the largest: first wins
    b = rng.standard_normal(32); b[4] = -10; b[20] = 10; add(b)
    # exact .5 ties: Q8_0 with amax 127 -> d = 1; Q4_0 with m = -8 -> d = 1, m = 8 -> d = -1 (Q5_0: 1/2)
    add(np.r_[127, -127, np.arange(-15, 15) + 0.5])
    add(np.r_[-8, np.linspace(-7.5, 7.5, 31)])
    add(np.r_[8, np.linspace(-7.5, 7.5, 31)])
    # just below .5 where trunc(y + 0.5) would round the wrong way
    add(np.r_[127, np.float32(0.49999997), np.float32(1.4999999), -np.float32(0.49999997),
              np.full(28, np.float32(2.4999998))])
    add(np.r_[-8, np.float32(0.49999997), -np.float32(0.50000006), np.full(29, np.float32(-1.4999999))])
    # magnitudes: tiny (fp16-subnormal and zero scales), float32-subnormal elements, huge
    for scale in (1e-30, 1e-20, 1e-9, 1e-7, 1e-6, 1e-5, 1e-4, 7e-3, 1e3, 1e5, 8.3e6, 1e7, 1e20, 1e37):
        add(rng.standard_normal(32) * scale)
    b = rng.standard_normal(32) * 1e-3; b[3] = 1e-40; b[9] = -3e-45; add(b)
    b = np.full(32, 2.5); add(b)                        # constant block
    b = np.full(32, -1.0); b[0] = 1.0; add(b)           # first-of-equal-magnitudes tie, positive first

    n_special = len(blocks)
    special_rows = -(-n_special // nb)
    while len(blocks) < special_rows * nb:
        add(rng.standard_normal(32))
    special = np.stack(blocks).reshape(special_rows, cols)

    # random rows, each block with its own magnitude across 1e-8..1e8
    n_rand = 61
    mags = 10.0 ** rng.uniform(-8, 8, size=(n_rand, nb, 1))
    rand = (rng.standard_normal((n_rand, nb, 32)) * mags).reshape(n_rand, cols)
    # heavy tails and some exactly representable half-integer grids
    rand[::5] = rng.standard_t(2, size=(len(rand[::5]), cols))
    rand[1::7] = np.round(rng.uniform(-20, 20, size=(len(rand[1::7]), cols)) * 2) / 2
    return np.concatenate([special, rand]).astype(np.float32)


# The awkward matrix deliberately holds blocks whose scale overflows float16 (gguf stores inf too).
_overflow_ok = pytest.mark.filterwarnings("ignore:.*overflow.*:RuntimeWarning")


@_overflow_ok
@pytest.mark.parametrize("fmt", FORMATS)
def test_bit_exact_vs_gguf_awkward(fmt):
    assert_bit_exact(awkward_matrix(0), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_float16_scale_overflow_warns(fmt):
    w = np.zeros((1, 64), np.float32)
    w[0, 40] = 1e7
    with pytest.warns(RuntimeWarning, match="overflows float16"):
        q, d = fmt_of(fmt).quantize(w)
    assert np.isinf(d[0, 1]) and d[0, 0] == 0


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(32,), (3, 32), (4, 5, 96), (17, 768)])
def test_bit_exact_vs_gguf_shapes(fmt, shape):
    rng = np.random.default_rng(len(shape))
    assert_bit_exact((rng.standard_normal(shape) * 0.02).astype(np.float32), fmt)


@_overflow_ok
@pytest.mark.parametrize("fmt", FORMATS)
def test_bit_exact_across_row_chunks(fmt, monkeypatch):
    # tiny chunks so that many chunk boundaries (and a ragged last chunk) are exercised
    monkeypatch.setattr(F, "_CHUNK_ELEMS", 3 * 256)
    assert_bit_exact(awkward_matrix(1), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_non_float32_inputs_convert_like_gguf(fmt):
    rng = np.random.default_rng(3)
    w64 = rng.standard_normal((8, 64)) * 0.1
    q, d = fmt_of(fmt).quantize(w64)
    q32, d32 = fmt_of(fmt).quantize(w64.astype(np.float32))
    assert np.array_equal(q, q32) and np.array_equal(d, d32)
    assert_bit_exact(w64.astype(np.float16).astype(np.float32), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_float32_subnormal_scale_blocks_decode_to_zero(fmt):
    # Blocks whose float32 1/d overflows: ggml/gguf cast inf/nan to integers there (undefined
    # codes); we emit the zero code. Both store a float16 scale of 0, so the values agree.
    w = np.zeros((2, 64), np.float32)
    w[0, :32] = np.linspace(-1, 1, 32) * np.float32(1e-38)
    w[1, 32:] = np.float32(1.5e-45)
    q, d = fmt_of(fmt).quantize(w)
    assert not d.any()
    assert np.all(q == fmt_of(fmt).offset)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gguf's float->int casts of inf/nan warn here
        ref = gguf_dequantized(w, fmt)
    assert np.array_equal(fmt_of(fmt).dequantize(q, d), ref)


# ---------------------------------------------------------------------------------------------
# chosen scales


def _round_half_away_f64(y: np.ndarray) -> np.ndarray:
    y = y.astype(np.float64)
    return np.sign(y) * np.floor(np.abs(y) + 0.5)   # exact in float64 for float32 inputs


@pytest.mark.parametrize("fmt", FORMATS)
def test_chosen_scale_codes(fmt):
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((40, 128)) * 0.05).astype(np.float32)
    _, d_native = fmt_of(fmt).quantize(w)
    # shrink some scales (forces clipping), grow others, flip sign of some, zero a few
    factor = rng.choice([0.5, 0.8, 1.0, 1.3, -1.0], size=d_native.shape)
    d = (d_native.astype(np.float32) * factor).astype(np.float16)
    d[0, 0] = 0
    d[3, 2] = np.float16(6e-8)      # subnormal float16 scale: x / d overflows -> clipped
    q, d_out = fmt_of(fmt).quantize(w, d=d)
    assert d_out is not d and np.array_equal(d_out.view(np.uint16), d.view(np.uint16))

    x = w.reshape(40, 4, 32)
    d32 = d.astype(np.float32)[..., None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        y = x / np.where(d32 == 0, np.float32(1), d32)   # float32 division, as documented
    y = np.where(d32 == 0, 0, y)
    f = fmt_of(fmt)
    want = (np.clip(_round_half_away_f64(np.clip(y, -200, 200)), f.qmin, f.qmax) + f.offset).astype(f.code_dtype)
    np.testing.assert_array_equal(q.reshape(40, 4, 32), want)

    # q is a nearest representable code wherever no clipping happened
    deq = fmt_of(fmt).dequantize(q, d).reshape(40, 4, 32).astype(np.float64)
    lo, hi = f.qmin, f.qmax
    inside = (y >= lo) & (y <= hi) & (d32 != 0)
    err = np.abs(deq - x)
    half_step = np.broadcast_to(np.abs(d32.astype(np.float64)) / 2, err.shape)
    assert np.all(err[inside] <= half_step[inside] * (1 + 1e-6))


@pytest.mark.parametrize("fmt", FORMATS)
def test_chosen_scale_validation(fmt):
    w = np.ones((2, 64), np.float32)
    with pytest.raises(ValueError, match="float16"):
        fmt_of(fmt).quantize(w, d=np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="shape"):
        fmt_of(fmt).quantize(w, d=np.ones((2, 3), np.float16))
    with pytest.raises(ValueError, match="finite"):
        fmt_of(fmt).quantize(w, d=np.full((2, 2), np.inf, np.float16))


@pytest.mark.parametrize("fmt", FORMATS)
def test_input_validation(fmt):
    with pytest.raises(ValueError, match="multiple of the block size 32"):
        fmt_of(fmt).quantize(np.ones((4, 48), np.float32))
    with pytest.raises(ValueError, match="multiple of the block size 32"):
        fmt_of(fmt).quantize(np.ones((4, 0), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        fmt_of(fmt).quantize(np.full((1, 32), np.nan, np.float32))
    other = next(f for f in F.FORMATS.values() if f.code_dtype != fmt_of(fmt).code_dtype and f.matmulnbits)
    with pytest.raises(ValueError):
        P.to_matmulnbits(other, *fmt_of(fmt).quantize(np.ones((2, 32), np.float32)))


def test_codes_out_of_range_rejected():
    with pytest.raises(ValueError, match="0..15"):
        P.to_matmulnbits(F.FORMATS["Q4_0"], np.full((1, 32), 16, np.uint8), np.ones((1, 1), np.float16))
    with pytest.raises(ValueError, match="0..31"):
        F.FORMATS["Q5_0"].dequantize(np.full((1, 32), 32, np.uint8), np.ones((1, 1), np.float16))
    with pytest.raises(ValueError, match="does not run as MatMulNBits"):
        P.to_matmulnbits(F.FORMATS["Q5_0"], np.full((1, 32), 3, np.uint8), np.ones((1, 1), np.float16))


# ---------------------------------------------------------------------------------------------
# packed layouts, checked against hand-written expectations


def test_layouts_by_hand():
    d = np.ones((1, 1), np.float16)
    q4 = np.arange(32, dtype=np.uint8).reshape(1, 32) % 16
    b, s = P.to_matmulnbits(F.FORMATS["Q4_0"], q4, d)
    assert b.shape == (1, 1, 16) and b.dtype == np.uint8 and s.dtype == np.float32 and s.shape == (1, 1)
    assert b[0, 0, 0] == (0 | 1 << 4) and b[0, 0, 7] == (14 | 15 << 4)   # adjacent pairs, low first
    q8 = np.array([[-128, -1, 0, 1, 127] + [0] * 27], np.int8)
    b8, _ = P.to_matmulnbits(F.FORMATS["Q8_0"], q8, d)
    assert b8.shape == (1, 1, 32) and list(b8[0, 0, :5]) == [0, 127, 128, 129, 255]
    q5 = np.arange(32, dtype=np.uint8).reshape(1, 32)                 # 0..31: bit 4 set from element 16 on
    b5 = P.pack_blocks(F.FORMATS["Q5_0"], q5)
    assert b5.shape == (1, 1, 20)
    assert b5[0, 0, 0] == (0 | 1 << 4) and b5[0, 0, 8] == (0 | 1 << 4)   # low nibbles of 16, 17 are 0, 1
    assert list(b5[0, 0, 16:]) == [0, 0, 0xFF, 0xFF]                     # the bit-4 plane, 8 elements a byte


@pytest.mark.parametrize("fmt", FORMATS)
def test_packing_round_trips(fmt):
    f = fmt_of(fmt)
    q, _ = f.quantize(awkward_matrix(2, cols=128)[:, :128].clip(-1e4, 1e4))
    packed = P.pack_blocks(f, q)
    assert packed.shape == (q.shape[0], 4, f.block_bytes) and packed.dtype == np.uint8
    unsigned = P.unpack_blocks(f, packed)
    np.testing.assert_array_equal(unsigned.astype(np.int16) - f.zero_point, f.signed(q))


def test_registry():
    assert F.get_format("q4_0") is F.FORMATS["Q4_0"] and F.matmulnbits_format(8).name == "Q8_0"
    with pytest.raises(ValueError, match="unknown block format 'Q3_K'; known: Q8_0, Q4_0, Q5_0"):
        F.get_format("Q3_K")
    with pytest.raises(ValueError, match="no block format runs as 5-bit MatMulNBits"):
        F.matmulnbits_format(5)
    for f in F.FORMATS.values():
        assert -f.zero_point <= f.qmin < 0 < f.qmax < f.zero_point   # every code fits the unsigned storage
        assert f.block_bytes * 8 == 32 * f.bits and f.ggml_type_size == gguf_quants.GGML_QUANT_SIZES[getattr(QT, f.name)][1]


# ---------------------------------------------------------------------------------------------
# onnxruntime decode exactness

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _session(nodes, inits: dict, inputs, outputs):
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              initializer=[numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _y(name="Y"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def matmulnbits_decode(w: np.ndarray, fmt: str, accuracy_level: int = 0, a: np.ndarray | None = None):
    """Run MatMulNBits on our packing; with A = identity the output is dequant(W).T."""
    n, k = w.shape
    f = fmt_of(fmt)
    b, s = P.to_matmulnbits(f, *f.quantize(w))
    node = helper.make_node("MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft",
                            **P.matmulnbits_attributes(n, k, f, accuracy_level))
    sess = _session([node], {"B": b, "S": s},
                    [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k])], [_y()])
    a = np.eye(k, dtype=np.float32) if a is None else a
    return sess.run(None, {"A": a})[0]


def _site_model(w_t: np.ndarray, op: str):
    """A one-node graph holding the export's weight name: MatMul(X, W_t [K, N]) or Gather(table, ids)."""
    if op == "MatMul":
        name, node = "dense_weights.0", helper.make_node("MatMul", ["X", "dense_weights.0"], ["Y"], name="head")
        inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, w_t.shape[0]])]
    else:
        name = "backbone.embed_tokens.weight"
        node = helper.make_node("Gather", [name, "ids"], ["Y"], name="lookup")
        inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, None)]
    graph = helper.make_graph([node], "g", inputs, [_y()], initializer=[numpy_helper.from_array(w_t, name)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model


def quantized_site(w_t: np.ndarray, op: str, fmt: str, decode_at_load: bool = False):
    """``_site_model`` with its weight replaced by ``quant.graph.replace_site`` (what the build writes)."""
    from quant import graph as G

    f = fmt_of(fmt)
    model = _site_model(w_t, op)
    (site,) = G.find_weight_sites(model)
    q, d = f.quantize(w_t.T if op == "MatMul" else w_t)   # blocks along K: [N, K] for MatMul, rows for the table
    G.replace_site(model, site, G.QuantizedWeight(f, P.pack_blocks(f, q), d), decode_at_load=decode_at_load)
    return model


def gather_decode(table: np.ndarray, fmt: str, ids: np.ndarray) -> np.ndarray:
    """The build's quantized token lookup (standard ops that decode only the gathered rows)."""
    model = quantized_site(table, "Gather", fmt)
    scales = next(i for i in model.graph.initializer if i.name.endswith(".scales"))
    assert scales.data_type == TensorProto.FLOAT16          # stored as ggml stores them
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"ids": ids})[0]


def _onnx_weight(seed=7, n=40, k=256):
    w = awkward_matrix(seed, cols=k)
    # keep every scale inside float16 range (Q4_0 overflows above |m| = 8 * 65504): an inf scale
    # decodes to nan, which is not comparable
    w = w[np.abs(w).max(axis=1) < 4e5]
    return np.concatenate([w, np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32) * 0.05])


@pytest.mark.parametrize("fmt", NBITS_FORMATS)
def test_matmulnbits_decodes_exactly(fmt):
    w = _onnx_weight()
    y = matmulnbits_decode(w, fmt, accuracy_level=0)
    assert y.shape == (w.shape[1], w.shape[0])
    assert np.array_equal(y.T, gguf_dequantized(w, fmt))


@pytest.mark.parametrize("fmt", NBITS_FORMATS)
@pytest.mark.parametrize("accuracy_level", [1, 2, 3, 4])
def test_matmulnbits_other_accuracy_levels(fmt, accuracy_level):
    # Observed on x86 AVX2 with fp32 A: levels 1-3 run the fp32 path and decode exactly; level 4
    # quantizes A to int8 per block, so even a one-hot A decodes only to ~1 ulp of the scale.
    rng = np.random.default_rng(11)
    w = (rng.standard_normal((48, 128)) * 0.05).astype(np.float32)
    ref = gguf_dequantized(w, fmt)
    y = matmulnbits_decode(w, fmt, accuracy_level=accuracy_level)
    if accuracy_level < 4:
        assert np.array_equal(y.T, ref)
    else:
        np.testing.assert_allclose(y.T, ref, rtol=0, atol=np.abs(ref).max() * 1e-5)
    a = rng.standard_normal((5, 128)).astype(np.float32)
    ya = matmulnbits_decode(w, fmt, accuracy_level=accuracy_level, a=a)
    exact = a.astype(np.float64) @ ref.T.astype(np.float64)
    tol = 1e-5 if accuracy_level < 4 else 3e-2
    assert np.abs(ya - exact).max() <= tol * np.abs(exact).max()


@pytest.mark.parametrize("fmt", NBITS_FORMATS)
def test_matmulnbits_flat_scales_accepted(fmt):
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((8, 64)) * 0.05).astype(np.float32)
    f = fmt_of(fmt)
    b, s = P.to_matmulnbits(f, *f.quantize(w))
    node = helper.make_node("MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft",
                            **P.matmulnbits_attributes(8, 64, f))
    sess = _session([node], {"B": b, "S": s.reshape(-1)},
                    [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, 64])], [_y()])
    assert np.array_equal(sess.run(None, {"A": np.eye(64, dtype=np.float32)})[0].T, gguf_dequantized(w, fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_gather_lookup_decodes_exactly(fmt):
    table = _onnx_weight(seed=9, n=64, k=128)
    v = table.shape[0]
    ids = np.array([[0, 5, v - 1, 5], [1, 2, 3, v // 2]], np.int64)
    y = gather_decode(table, fmt, ids)
    assert y.shape == (2, 4, 128) and y.dtype == np.float32
    assert np.array_equal(y, gguf_dequantized(table, fmt)[ids])


def test_gather_int8_dequantizelinear_alternative_is_exact():
    # Portable 8-bit embedding path (standard ops only): Gather int8 codes and float32 scales, then
    # blocked DequantizeLinear (opset 21) along the last axis.
    table = _onnx_weight(seed=4, n=32, k=96)
    q, d = F.FORMATS["Q8_0"].quantize(table)
    nodes = [helper.make_node("Gather", ["Q", "ids"], ["gq"]),
             helper.make_node("Gather", ["S", "ids"], ["gs"]),
             helper.make_node("DequantizeLinear", ["gq", "gs"], ["Y"], axis=-1, block_size=32)]
    sess = _session(nodes, {"Q": q, "S": d.astype(np.float32)},
                    [helper.make_tensor_value_info("ids", TensorProto.INT64, None)], [_y()])
    ids = np.array([[3, 0, 3], [table.shape[0] - 1, 7, 1]], np.int64)
    assert np.array_equal(sess.run(None, {"ids": ids})[0], gguf_dequantized(table, "Q8_0")[ids])


# ---------------------------------------------------------------------------------------------
# real checkpoint (opt-in)

_REAL_DIR = os.environ.get("EMBEDDINGGEMMA_DIR")
real_model = pytest.mark.skipif(
    not _REAL_DIR, reason="set EMBEDDINGGEMMA_DIR to the embeddinggemma-300m checkpoint to run real-weight checks")

REAL_TENSORS = [
    "layers.0.mlp.down_proj.weight",
    "layers.0.self_attn.q_proj.weight",
    "layers.0.self_attn.k_proj.weight",
    "layers.11.mlp.gate_proj.weight",
    "layers.23.self_attn.o_proj.weight",
]


@functools.lru_cache(maxsize=None)
def _load_real(name: str) -> np.ndarray:
    from safetensors import safe_open
    path = Path(_REAL_DIR) / "model.safetensors"
    with safe_open(str(path), "np") as f:
        if name not in f.keys():
            pytest.skip(f"{name} not in {path}")
        if name == "embed_tokens.weight":
            # every 61st row plus the first and last 512: enough variety, keeps gguf fast
            sl = f.get_slice(name)
            vocab = sl.get_shape()[0]
            rows = np.unique(np.r_[np.arange(512), np.arange(0, vocab, 61), np.arange(vocab - 512, vocab)])
            full = f.get_tensor(name)
            return np.ascontiguousarray(full[rows])
        return f.get_tensor(name)


@pytest.mark.real_model
@real_model
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", REAL_TENSORS + ["embed_tokens.weight"])
def test_real_weights_bit_exact(fmt, name):
    w = _load_real(name)
    assert w.dtype == np.float32
    assert_bit_exact(w, fmt)


@pytest.mark.real_model
@real_model
@pytest.mark.parametrize("fmt", FORMATS)
def test_real_weights_onnx_decode(fmt):
    w = _load_real("layers.0.mlp.down_proj.weight")
    if fmt_of(fmt).matmulnbits:
        assert np.array_equal(matmulnbits_decode(w, fmt).T, gguf_dequantized(w, fmt))
    table = _load_real("embed_tokens.weight")
    ids = np.array([[0, 1, 2, 100, table.shape[0] - 1]], np.int64)
    assert np.array_equal(gather_decode(table, fmt, ids), gguf_dequantized(table, fmt)[ids])


@pytest.mark.parametrize("fmt", FORMATS)
def test_matmul_decoded_at_load_is_exact_and_decoded_once(fmt, tmp_path):
    """``replace_site(decode_at_load=True)`` (and every format MatMulNBits cannot run): a MatMul on
    the format's exact values (gguf's decode), whose decode onnxruntime folds into a constant when
    the session loads (nothing left per call)."""
    w = _onnx_weight(seed=11, n=48, k=256)        # torch-Linear layout [N, K]: blocks along K
    k = w.shape[1]
    x = np.random.default_rng(3).standard_normal((5, k)).astype(np.float32)
    model = quantized_site(np.ascontiguousarray(w.T), "MatMul", fmt, decode_at_load=True)
    scales = next(i for i in model.graph.initializer if i.name == "dense_weights.0.scales")
    assert scales.data_type == TensorProto.FLOAT16          # stored as ggml stores them
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    got = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    want = x.astype(np.float64) @ gguf_dequantized(w, fmt).T.astype(np.float64)
    scale = np.abs(x).astype(np.float64) @ np.abs(gguf_dequantized(w, fmt)).T.astype(np.float64)
    assert np.all(np.abs(got - want) <= 1e-5 * scale + 1e-30)   # float32 summation, nothing else
    assert [nd.op_type for nd in onnx.load(so.optimized_model_filepath).graph.node] == ["MatMul"]
