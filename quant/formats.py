"""ggml Q8_0 / Q4_0 block quantization in plain numpy, and their onnxruntime contrib-op encodings.

Formats (ggml, blocks of ``BLOCK_SIZE`` = 32 consecutive weights along the last axis):

* Q8_0: ``d = amax / 127`` (float32, stored as float16), code ``q = round_half_away(x * (1/d))`` as
  int8, value ``q * d16``.
* Q4_0: ``m`` = the signed value of largest magnitude (first one on ties), ``d = m / -8``, code
  ``q = min(15, trunc(x * (1/d) + 8.5))`` as a nibble 0..15, value ``(q - 8) * d16``.

As in ggml (and gguf's numpy port), the codes are computed with the float32 ``d`` *before* it is
rounded to float16, and by multiplying with its float32 reciprocal; only the stored scale is float16.
The quantizers here are bit-exact to ``gguf.quants.quantize`` (gguf 0.19) for every finite input
except blocks whose float32 ``1/d`` overflows (block max below ~1e-36): ggml casts inf/nan to an
integer there (undefined behaviour), while we emit the zero code; the float16 scale of such a block
is 0, so the decoded values (all 0) agree either way.

Codes are returned unpacked (one per element) with the scales alongside; the ``to_*`` functions pack
them for ggml files and for onnxruntime's ``com.microsoft`` MatMulNBits / GatherBlockQuantized.
All scales handed to onnxruntime are float32 widenings of the float16 ``d``, which is exact, so the
onnxruntime decode ``(code - zero_point) * scale`` equals ggml's dequantization bit for bit.

numpy only: no torch, no gguf (gguf serves only as the independent reference in the tests).
"""
from __future__ import annotations

import warnings

import numpy as np

BLOCK_SIZE = 32
#: Largest code magnitude for Q8_0. ggml's own quantizer never emits -128; with a caller-chosen
#: scale we clip to the same symmetric range so codes stay within what ggml itself produces.
Q8_0_QMAX = 127

# Rows are processed in chunks of about this many elements so that a 262144 x 768 table needs only
# a few tens of MB of float32 temporaries on top of its outputs.
_CHUNK_ELEMS = 1 << 20

_GGML_TYPE_SIZE = {"q8_0": 2 + BLOCK_SIZE, "q4_0": 2 + BLOCK_SIZE // 2}


# ----------------------------------------------------------------------------------------------
# helpers


def _as_rows(w: np.ndarray, name: str = "w") -> tuple[np.ndarray, tuple[int, ...]]:
    w = np.asarray(w)
    if w.ndim < 1:
        raise ValueError(f"{name} must have at least one dimension")
    cols = w.shape[-1]
    if cols == 0 or cols % BLOCK_SIZE:
        raise ValueError(
            f"{name}: last dimension is {cols}, which is not a positive multiple of the block size "
            f"{BLOCK_SIZE}; ggml Q8_0/Q4_0 blocks run along the last (input) axis")
    return w.reshape(-1, cols), w.shape


def _row_chunks(n_rows: int, cols: int):
    step = max(1, _CHUNK_ELEMS // cols)
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


def _blocks_f32(rows: np.ndarray, start: int, stop: int) -> np.ndarray:
    # gguf converts to float32 first too, so float64/float16 inputs quantize identically.
    x = rows[start:stop].astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ValueError("cannot quantize non-finite values (inf/nan)")
    return x.reshape(stop - start, -1, BLOCK_SIZE)


def _check_scales(d, shape: tuple[int, ...], n_rows: int) -> np.ndarray:
    d = np.asarray(d)
    want = (*shape[:-1], shape[-1] // BLOCK_SIZE)
    if d.dtype != np.float16:
        raise ValueError(f"scales must be float16 (the stored ggml scale), got {d.dtype}")
    if d.shape != want:
        raise ValueError(f"scales have shape {d.shape}, expected {want}")
    if not np.isfinite(d).all():
        raise ValueError("scales must be finite")
    return d.reshape(n_rows, -1)


def _to_f16_scales(d32: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        d16 = d32.astype(np.float16)
    if np.isinf(d16).any():
        # Kept (ggml/gguf store the same inf) but never silent: such a block decodes to inf/nan.
        warnings.warn("a block scale overflows float16 (|x| above ~8.3e6 for Q8_0, ~5.2e5 for Q4_0); "
                      "it is stored as inf and the block decodes to inf/nan", RuntimeWarning, stacklevel=3)
    return d16


def _reciprocal(d32: np.ndarray) -> np.ndarray:
    # ggml multiplies by 1/d instead of dividing by d; a zero d (all-zero block) gives 0. A float32 d
    # so small that 1/d overflows is also mapped to 0 (see module docstring).
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.float32(1) / d32
    inv[~np.isfinite(inv)] = 0
    return inv


def _round_half_away(y: np.ndarray) -> np.ndarray:
    """roundf(): nearest integer, ties away from zero, exactly in float32 (y is consumed).

    trunc(y + 0.5) is not exact: e.g. 0.49999997f + 0.5f rounds up to 1.0f.
    """
    a = np.abs(y)
    f = np.floor(a)
    a -= f                      # exact fractional part
    f += a >= np.float32(0.5)
    return np.copysign(f, y, out=f)


def _check_codes(q, bits: int, name: str = "q") -> np.ndarray:
    q = np.asarray(q)
    if bits == 8:
        if q.dtype != np.int8:
            raise ValueError(f"{name}: 8-bit (Q8_0) codes must be int8, got {q.dtype}")
    elif bits == 4:
        if q.dtype != np.uint8:
            raise ValueError(f"{name}: 4-bit (Q4_0) codes must be uint8 nibbles, got {q.dtype}")
        if q.size and q.max() > 15:
            raise ValueError(f"{name}: 4-bit (Q4_0) codes must be in 0..15")
    else:
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if q.ndim < 1 or q.shape[-1] == 0 or q.shape[-1] % BLOCK_SIZE:
        raise ValueError(f"{name}: last dimension {q.shape[-1:]} is not a positive multiple of {BLOCK_SIZE}")
    return q


def _check_pair(q, d, bits: int, ndim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    q = _check_codes(q, bits)
    d = np.asarray(d)
    if ndim is not None and q.ndim != ndim:
        raise ValueError(f"codes must be {ndim}-D, got shape {q.shape}")
    want = (*q.shape[:-1], q.shape[-1] // BLOCK_SIZE)
    if d.dtype != np.float16 or d.shape != want:
        raise ValueError(f"scales must be float16 with shape {want}, got {d.dtype} {d.shape}")
    return q, d


# ----------------------------------------------------------------------------------------------
# quantize / dequantize


def quantize_q8_0(w, d=None) -> tuple[np.ndarray, np.ndarray]:
    """Quantize ``w`` [..., cols] to ggml Q8_0: returns ``(q int8 [..., cols], d float16 [..., cols//32])``.

    Without ``d`` this is ggml's round-to-nearest quantizer, bit-exact to gguf. With a caller-chosen
    float16 scale ``d`` (shape ``[..., cols//32]``), the codes are
    ``q = clip(round_half_away(x / d), -127, 127)`` with a correctly rounded float32 division by the
    float16 value itself (0 where ``d == 0``), and ``d`` is returned unchanged.
    ``cols`` must be a multiple of 32 (ValueError otherwise).
    """
    rows, shape = _as_rows(w)
    n, cols = rows.shape
    nb = cols // BLOCK_SIZE
    given = None if d is None else _check_scales(d, shape, n)
    q = np.empty((n, cols), np.int8)
    d_out = np.empty((n, nb), np.float16)
    for s, e in _row_chunks(n, cols):
        x = _blocks_f32(rows, s, e)
        if given is None:
            d32 = np.abs(x).max(axis=-1) / np.float32(Q8_0_QMAX)
            y = x * _reciprocal(d32)[..., None]
            d_out[s:e] = _to_f16_scales(d32)
        else:
            d16 = given[s:e]
            d32 = d16.astype(np.float32)
            zero = d32 == 0
            with np.errstate(over="ignore"):
                y = x / np.where(zero, np.float32(1), d32)[..., None]
            y[zero] = 0
            # clip before rounding (same result as after, since the bounds are integers) so no inf
            # reaches the rounding step
            np.clip(y, -Q8_0_QMAX, Q8_0_QMAX, out=y)
            d_out[s:e] = d16
        q[s:e] = _round_half_away(y).astype(np.int8).reshape(e - s, cols)
    return q.reshape(shape), d_out.reshape(*shape[:-1], nb)


def quantize_q4_0(w, d=None) -> tuple[np.ndarray, np.ndarray]:
    """Quantize ``w`` [..., cols] to ggml Q4_0: returns ``(q uint8 0..15 [..., cols], d float16 [..., cols//32])``.

    Without ``d`` this is ggml's quantizer, bit-exact to gguf: ``d = m / -8`` with ``m`` the signed
    value of largest magnitude, ``q = min(15, trunc(x/d + 8.5))`` (so ties round towards +inf).
    With a caller-chosen float16 ``d`` (``[..., cols//32]``, any sign), the codes are
    ``q = clip(round_half_away(x / d) + 8, 0, 15)`` (float32 division by the float16 value; code 8,
    i.e. zero, where ``d == 0``) and ``d`` is returned unchanged. Note that feeding back the ``d``
    returned by the native path may change a few codes, because ggml derives codes from the
    unrounded float32 scale and rounds ties upwards. The decoded value is ``(q - 8) * d``.
    """
    rows, shape = _as_rows(w)
    n, cols = rows.shape
    nb = cols // BLOCK_SIZE
    given = None if d is None else _check_scales(d, shape, n)
    q = np.empty((n, cols), np.uint8)
    d_out = np.empty((n, nb), np.float16)
    for s, e in _row_chunks(n, cols):
        x = _blocks_f32(rows, s, e)
        if given is None:
            imax = np.abs(x).argmax(axis=-1)[..., None]          # first index on ties, like gguf
            m = np.take_along_axis(x, imax, axis=-1)[..., 0]
            d32 = m / np.float32(-8)
            y = x * _reciprocal(d32)[..., None]
            y += np.float32(8.5)
            # y >= 0 here, so the float->uint8 cast truncates exactly like gguf's np.trunc
            qq = y.astype(np.uint8)
            np.minimum(qq, np.uint8(15), out=qq)
            d_out[s:e] = _to_f16_scales(d32)
        else:
            d16 = given[s:e]
            d32 = d16.astype(np.float32)
            zero = d32 == 0
            with np.errstate(over="ignore"):
                y = x / np.where(zero, np.float32(1), d32)[..., None]
            y[zero] = 0
            np.clip(y, -8, 7, out=y)
            y = _round_half_away(y)
            y += np.float32(8)
            qq = y.astype(np.uint8)
            d_out[s:e] = d16
        q[s:e] = qq.reshape(e - s, cols)
    return q.reshape(shape), d_out.reshape(*shape[:-1], nb)


def _dequantize(vals: np.ndarray, d: np.ndarray) -> np.ndarray:
    out = np.empty(vals.shape, np.float32)
    nb = vals.shape[-1] // BLOCK_SIZE
    # int8 * float32 -> float32; every product code*d16 is exact in float32.
    np.multiply(vals.reshape(-1, nb, BLOCK_SIZE), d.astype(np.float32).reshape(-1, nb, 1),
                out=out.reshape(-1, nb, BLOCK_SIZE))
    return out


def dequantize_q8_0(q, d) -> np.ndarray:
    """Decode Q8_0 codes/scales to float32 ``q * d`` (same shape as ``q``), exactly as ggml/gguf do."""
    q, d = _check_pair(q, d, 8)
    return _dequantize(q, d)


def dequantize_q4_0(q, d) -> np.ndarray:
    """Decode Q4_0 nibbles/scales to float32 ``(q - 8) * d`` (same shape as ``q``), exactly as ggml/gguf do."""
    q, d = _check_pair(q, d, 4)
    return _dequantize(q.view(np.int8) - np.int8(8), d)


def quantizer(bits: int):
    """``quantize_q8_0`` for 8 bits, ``quantize_q4_0`` for 4 (a ValueError otherwise)."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 (Q4_0) or 8 (Q8_0), got {bits!r}")
    return quantize_q8_0 if bits == 8 else quantize_q4_0


def dequantizer(bits: int):
    """``dequantize_q8_0`` for 8 bits, ``dequantize_q4_0`` for 4 (a ValueError otherwise)."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 (Q4_0) or 8 (Q8_0), got {bits!r}")
    return dequantize_q8_0 if bits == 8 else dequantize_q4_0


# ----------------------------------------------------------------------------------------------
# packing


def _pack_nibbles_adjacent(q: np.ndarray) -> np.ndarray:
    # onnxruntime: element 2i in the low nibble, element 2i+1 in the high nibble of byte i.
    return q[..., 0::2] | (q[..., 1::2] << np.uint8(4))


def _codes_as_uint8(q: np.ndarray, bits: int) -> np.ndarray:
    """Codes as onnxruntime's unsigned storage with its default zero point 2**(bits-1).

    Q4_0 nibbles already carry the +8 offset. For Q8_0, int8 v -> uint8 v + 128, which is just
    flipping the sign bit.
    """
    if bits == 8:
        return q.view(np.uint8) ^ np.uint8(0x80)
    return _pack_nibbles_adjacent(q)


def to_matmulnbits(q, d, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode a quantized torch-Linear weight W [N_out, K_in] for ``com.microsoft.MatMulNBits``.

    ``(q, d)`` come from ``quantize_q8_0`` (bits=8) or ``quantize_q4_0`` (bits=4). Returns
    ``(B uint8 [N, K/32, 32*bits/8], scales float32 [N, K/32])`` for a node with attributes
    ``matmulnbits_attributes(N, K, bits)`` and *no* zero_points input: onnxruntime then uses the
    zero point 2**(bits-1) (8 or 128), which reproduces ggml's symmetric codes. Packing is
    low-first along K: for 4 bits, byte i of a block holds element 2i in its low nibble and 2i+1 in
    its high nibble (ggml's Q4_0 layout differs: element i with i+16). For 8 bits, byte = code+128.
    The node computes ``Y = A @ dequant(B).T`` (A [..., K] -> Y [..., N]). The 2-D scales shape is the
    one onnxruntime's own quantizer writes; the flat ``scales.reshape(-1)`` is accepted as well.
    """
    q, d = _check_pair(q, d, bits, ndim=2)
    n, k = q.shape
    blob = BLOCK_SIZE * bits // 8
    b = _codes_as_uint8(q, bits).reshape(n, k // BLOCK_SIZE, blob)
    return np.ascontiguousarray(b), d.astype(np.float32)


def matmulnbits_attributes(n: int, k: int, bits: int, accuracy_level: int = 0) -> dict[str, int]:
    """Attributes for the MatMulNBits node that consumes ``to_matmulnbits`` output.

    accuracy_level 0 (the default) decodes exactly (fp32 compute); 4 quantizes the activations to
    int8 per block and is not exact (see docs/notes/formats.md).
    """
    return {"K": int(k), "N": int(n), "bits": int(bits), "block_size": BLOCK_SIZE,
            "accuracy_level": int(accuracy_level)}


def to_gather_block_quantized(q, d, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode an embedding table [vocab, hidden] (quantized along hidden) for ``com.microsoft.GatherBlockQuantized``.

    Returns ``(data uint8 [vocab, hidden*bits/8], scales float32 [vocab, hidden/32])`` for a node with
    ``gather_block_quantized_attributes(bits)`` (gather_axis=0, quantize_axis=1, block_size=32) and no
    zero_points input. Byte layout is the same as ``to_matmulnbits`` (uint8 storage, default zero
    point 2**(bits-1), adjacent nibbles for 4 bits). bits=8 with uint8 data is supported by the CPU
    kernel of onnxruntime 1.32 (verified in tests). The output dtype follows the scales, so float32
    scales give a float32 output that equals the ggml dequantization exactly.
    """
    q, d = _check_pair(q, d, bits, ndim=2)
    return np.ascontiguousarray(_codes_as_uint8(q, bits)), d.astype(np.float32)


def gather_block_quantized_attributes(bits: int) -> dict[str, int]:
    """Attributes for the GatherBlockQuantized node that consumes ``to_gather_block_quantized`` output."""
    return {"gather_axis": 0, "quantize_axis": 1, "block_size": BLOCK_SIZE, "bits": int(bits)}


def to_ggml_bytes(q, d, fmt: str) -> np.ndarray:
    """Pack codes/scales into ggml block bytes ``uint8 [..., cols//32 * type_size]`` (what a GGUF file stores).

    Each block is the little-endian float16 ``d`` followed by the codes: 32 int8 for ``"q8_0"``
    (34 bytes); for ``"q4_0"`` 16 bytes where byte j holds element j in its low nibble and element
    j+16 in its high nibble (18 bytes).
    """
    bits = _fmt_bits(fmt)
    q, d = _check_pair(q, d, bits)
    nb = q.shape[-1] // BLOCK_SIZE
    qb = q.reshape(-1, nb, BLOCK_SIZE)
    if bits == 8:
        payload = qb.view(np.uint8)
    else:
        half = BLOCK_SIZE // 2
        payload = qb[..., :half] | (qb[..., half:] << np.uint8(4))
    scale_bytes = d.astype("<f2").reshape(-1, nb, 1).view(np.uint8)
    out = np.concatenate([scale_bytes, payload], axis=-1)
    return out.reshape(*q.shape[:-1], nb * _GGML_TYPE_SIZE[fmt.lower()])


def from_ggml_bytes(buf, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``to_ggml_bytes``: ggml block bytes ``uint8 [..., n_bytes]`` -> ``(q, d float16)``."""
    bits = _fmt_bits(fmt)
    size = _GGML_TYPE_SIZE[fmt.lower()]
    buf = np.asarray(buf)
    if buf.dtype != np.uint8 or buf.ndim < 1 or buf.shape[-1] % size:
        raise ValueError(f"expected uint8 bytes with last dimension a multiple of {size}")
    nb = buf.shape[-1] // size
    blocks = buf.reshape(-1, nb, size)
    d = np.ascontiguousarray(blocks[..., :2]).view("<f2")[..., 0].astype(np.float16)
    payload = blocks[..., 2:]
    if bits == 8:
        q = np.ascontiguousarray(payload).view(np.int8)
    else:
        q = np.concatenate([payload & np.uint8(0x0F), payload >> np.uint8(4)], axis=-1)
    return (q.reshape(*buf.shape[:-1], nb * BLOCK_SIZE),
            d.reshape(*buf.shape[:-1], nb))


def _fmt_bits(fmt: str) -> int:
    f = fmt.lower()
    if f not in _GGML_TYPE_SIZE:
        raise ValueError(f"unknown format {fmt!r}; expected 'q8_0' or 'q4_0'")
    return 8 if f == "q8_0" else 4
