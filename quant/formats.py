"""The ggml block formats, one definition each, and their numpy quantizers (bit-exact to ggml).

A ``BlockFormat`` says everything the other quant modules need about a format: its code range and
how codes are stored, ggml's round-to-nearest rule, the scale candidates the calibrated search
tries, whether onnxruntime's ``MatMulNBits`` runs it, and its ggml byte layout. The recipe grammar,
GPTQ, the graph writer and the level probe read these definitions, so a new format is one entry in
``FORMATS`` (plus its tests against the ``gguf`` package).

The formats (blocks of 32 consecutive weights along the last axis; ``d`` stored as float16):

* Q8_0: ``d = amax / 127``, code ``round_half_away(x * (1/d))`` as int8, value ``q * d``.
* Q4_0: ``m`` = the signed value of largest magnitude (first one on ties), ``d = m / -8``, code
  ``min(15, trunc(x * (1/d) + 8.5))`` as a nibble, value ``(q - 8) * d``.
* Q5_0: as Q4_0 with 16 in place of 8: ``d = m / -16``, code ``min(31, trunc(x * (1/d) + 16.5))``,
  value ``(q - 16) * d``.

As in ggml (and gguf's numpy port), codes are computed with the float32 ``d`` before it is rounded
to float16, by multiplying with its float32 reciprocal; only the stored scale is float16. The
quantizers are bit-exact to ``gguf.quants.quantize`` (gguf 0.19) for every finite input except
blocks whose float32 ``1/d`` overflows (block max below ~1e-36): ggml casts inf/nan to an integer
there (undefined behaviour), while we emit the zero code; the float16 scale of such a block is 0, so
the decoded values (all 0) agree either way.

numpy only: no torch, no gguf (gguf serves only as the independent reference in the tests).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

#: Weights per block in every ggml format here.
BLOCK_SIZE = 32

# Rows are processed in chunks of about this many elements so that a 262144 x 768 table needs only
# a few tens of MB of float32 temporaries on top of its outputs.
_CHUNK_ELEMS = 1 << 20


@dataclass(frozen=True)
class BlockFormat:
    """One ggml block format.

    Codes are handed around in the format's own convention: ``code_dtype`` values equal to the
    signed code (``qmin..qmax``) plus ``offset`` (Q8_0: int8, offset 0; Q4_0 / Q5_0: uint8 with the
    ggml offset 8 / 16). onnxruntime stores every code unsigned with the zero point ``2**(bits-1)``.
    """

    name: str                  # ggml's name, e.g. "Q4_0"
    recipe_code: str           # how a recipe spells it: e4 = embeddings in Q4_0
    bits: int
    qmin: int                  # signed code range
    qmax: int
    offset: int                # format code = signed code + offset
    code_dtype: type
    rule: str                  # ggml's round-to-nearest: "absmax" (Q8_0) or "signed_max" (Q4_0, Q5_0)
    #: Candidates of the calibrated scale search, as "the code the block's largest-magnitude weight
    #: maps to": negative values map it onto the negative end (ggml's own Q4_0 / Q5_0 choice).
    scale_targets: tuple[float, ...]
    #: com.microsoft.MatMulNBits runs it exactly (symmetric codes with the op's default zero point);
    #: other formats' matmuls run in float32 on weights decoded once when the session loads.
    matmulnbits: bool
    #: Activation-aware scales (quant.awq) are searched for its attention / feed-forward weights.
    activation_aware: bool
    ggml_type_size: int        # bytes per block in a GGUF file

    @property
    def zero_point(self) -> int:
        """onnxruntime's unsigned storage offset, ``2**(bits-1)``."""
        return 1 << (self.bits - 1)

    @property
    def block_bytes(self) -> int:
        """Bytes of one block's codes in onnxruntime's packing (no scale)."""
        return BLOCK_SIZE * self.bits // 8

    def quantize(self, w, d=None) -> tuple[np.ndarray, np.ndarray]:
        """Quantize ``w`` [..., cols]: ``(codes [..., cols], float16 scales [..., cols//32])``.

        Without ``d`` this is ggml's round-to-nearest, bit-exact to gguf. With caller-chosen float16
        scales ``d`` ([..., cols//32], any sign) the codes are ``clip(round_half_away(x / d))`` in
        range (correctly rounded float32 division by the float16 value; the zero code where
        ``d == 0``) and ``d`` is returned unchanged. Feeding back the ``d`` returned by the native path
        may change a few codes: ggml derives codes from the unrounded float32 scale. ``cols`` must be a
        multiple of 32.
        """
        return _quantize(self, w, d)

    def dequantize(self, q, d) -> np.ndarray:
        """Decode codes and float16 scales to float32 ``signed code * d``, exactly as ggml/gguf do."""
        q, d = check_pair(self, q, d)
        return _dequantize(self.signed(q), d)

    def signed(self, q: np.ndarray) -> np.ndarray:
        """The signed codes (int8) of codes in this format's convention."""
        q = np.asarray(q)
        return q if self.offset == 0 else q.view(np.int8) - np.int8(self.offset)

    def from_signed(self, s: np.ndarray) -> np.ndarray:
        """Codes in this format's convention from signed codes in ``qmin..qmax``."""
        return (np.asarray(s) + self.offset).astype(self.code_dtype)


FORMATS: dict[str, BlockFormat] = {f.name: f for f in (
    BlockFormat("Q8_0", "8", bits=8, qmin=-127, qmax=127, offset=0, code_dtype=np.int8, rule="absmax",
                scale_targets=(-127.0, -126.0, -125.0, -124.0, -122.0, -120.0, -128.0, -129.0, -131.0,
                               127.0, 126.0, 125.0, 124.0, 122.0),
                matmulnbits=True, activation_aware=False, ggml_type_size=2 + 32),
    BlockFormat("Q4_0", "4", bits=4, qmin=-8, qmax=7, offset=8, code_dtype=np.uint8, rule="signed_max",
                scale_targets=(-8.0, -7.75, -7.5, -7.25, -7.0, -6.75, -6.5, -6.0, -8.25, -8.5, -9.0,
                               7.0, 6.75, 6.5, 7.25, 7.5),
                matmulnbits=True, activation_aware=True, ggml_type_size=2 + 16),
    # The Q4_0 grid scaled to 5 bits (not tuned); MatMulNBits has no 5-bit CPU kernel.
    BlockFormat("Q5_0", "5", bits=5, qmin=-16, qmax=15, offset=16, code_dtype=np.uint8, rule="signed_max",
                scale_targets=(-16.0, -15.5, -15.0, -14.5, -14.0, -13.5, -13.0, -12.0, -16.5, -17.0, -18.0,
                               15.0, 14.5, 14.0, 15.5, 16.0),
                matmulnbits=False, activation_aware=False, ggml_type_size=2 + 4 + 16),
)}


def get_format(name: str) -> BlockFormat:
    """The format called ``name`` (case-insensitive, e.g. ``q4_0``); ValueError naming the known ones."""
    fmt = FORMATS.get(str(name).upper())
    if fmt is None:
        raise ValueError(f"unknown block format {name!r}; known: {', '.join(FORMATS)}")
    return fmt


def matmulnbits_format(bits: int) -> BlockFormat:
    """The format a MatMulNBits node with ``bits`` holds (each width has one such format)."""
    for fmt in FORMATS.values():
        if fmt.matmulnbits and fmt.bits == bits:
            return fmt
    raise ValueError(f"no block format runs as {bits}-bit MatMulNBits")


# ----------------------------------------------------------------------------------------------
# quantize / dequantize


def _as_rows(w: np.ndarray, name: str = "w") -> tuple[np.ndarray, tuple[int, ...]]:
    w = np.asarray(w)
    if w.ndim < 1:
        raise ValueError(f"{name} must have at least one dimension")
    cols = w.shape[-1]
    if cols == 0 or cols % BLOCK_SIZE:
        raise ValueError(
            f"{name}: last dimension is {cols}, which is not a positive multiple of the block size "
            f"{BLOCK_SIZE}; ggml blocks run along the last (input) axis")
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
        warnings.warn("a block scale overflows float16 (weights far above the format's range); it is stored as "
                      "inf and the block decodes to inf/nan", RuntimeWarning, stacklevel=4)
    return d16


def _reciprocal(d32: np.ndarray) -> np.ndarray:
    # ggml multiplies by 1/d instead of dividing by d; a zero d (all-zero block) gives 0. A float32 d
    # so small that 1/d overflows is also mapped to 0 (see module docstring).
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.float32(1) / d32
    inv[~np.isfinite(inv)] = 0
    return inv


def round_half_away(y: np.ndarray) -> np.ndarray:
    """roundf(): nearest integer, ties away from zero, exactly in float32 (y is consumed).

    trunc(y + 0.5) is not exact: e.g. 0.49999997f + 0.5f rounds up to 1.0f.
    """
    a = np.abs(y)
    f = np.floor(a)
    a -= f                      # exact fractional part
    f += a >= np.float32(0.5)
    return np.copysign(f, y, out=f)


def _rtn_block(fmt: BlockFormat, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's own codes and float32 scales for blocks ``x`` [rows, nb, 32]."""
    if fmt.rule == "absmax":
        d32 = np.abs(x).max(axis=-1) / np.float32(fmt.qmax)
        y = x * _reciprocal(d32)[..., None]
        return round_half_away(y).astype(fmt.code_dtype), d32
    imax = np.abs(x).argmax(axis=-1)[..., None]          # first index on ties, like gguf
    m = np.take_along_axis(x, imax, axis=-1)[..., 0]
    d32 = m / np.float32(fmt.qmin)
    y = x * _reciprocal(d32)[..., None]
    y += np.float32(fmt.offset + 0.5)
    # y >= 0 here, so the float->uint8 cast truncates exactly like gguf's np.trunc
    q = y.astype(np.uint8)
    np.minimum(q, np.uint8(fmt.qmax + fmt.offset), out=q)
    return q, d32


def _quantize(fmt: BlockFormat, w, d) -> tuple[np.ndarray, np.ndarray]:
    rows, shape = _as_rows(w)
    n, cols = rows.shape
    nb = cols // BLOCK_SIZE
    given = None if d is None else _check_scales(d, shape, n)
    q = np.empty((n, cols), fmt.code_dtype)
    d_out = np.empty((n, nb), np.float16)
    for s, e in _row_chunks(n, cols):
        x = _blocks_f32(rows, s, e)
        if given is None:
            qq, d32 = _rtn_block(fmt, x)
            d_out[s:e] = _to_f16_scales(d32)
        else:
            d16 = given[s:e]
            d32 = d16.astype(np.float32)
            zero = d32 == 0
            with np.errstate(over="ignore"):
                y = x / np.where(zero, np.float32(1), d32)[..., None]
            y[zero] = 0
            # clip before rounding (same result as after, the bounds being integers) so no inf
            # reaches the rounding step
            np.clip(y, fmt.qmin, fmt.qmax, out=y)
            y = round_half_away(y)
            if fmt.offset:
                y += np.float32(fmt.offset)
            qq = y.astype(fmt.code_dtype)
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


def check_codes(fmt: BlockFormat, q, name: str = "q") -> np.ndarray:
    """``q`` as codes of ``fmt`` (dtype, range, a last axis of whole blocks), else ValueError."""
    q = np.asarray(q)
    if q.dtype != fmt.code_dtype:
        raise ValueError(f"{name}: {fmt.name} codes must be {np.dtype(fmt.code_dtype).name}, got {q.dtype}")
    if fmt.offset and q.size and q.max() > fmt.qmax + fmt.offset:
        raise ValueError(f"{name}: {fmt.name} codes must be in 0..{fmt.qmax + fmt.offset}")
    if q.ndim < 1 or q.shape[-1] == 0 or q.shape[-1] % BLOCK_SIZE:
        raise ValueError(f"{name}: last dimension {q.shape[-1:]} is not a positive multiple of {BLOCK_SIZE}")
    return q


def check_pair(fmt: BlockFormat, q, d, ndim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Codes and float16 scales of ``fmt`` that belong together, else ValueError."""
    q = check_codes(fmt, q)
    d = np.asarray(d)
    if ndim is not None and q.ndim != ndim:
        raise ValueError(f"codes must be {ndim}-D, got shape {q.shape}")
    want = (*q.shape[:-1], q.shape[-1] // BLOCK_SIZE)
    if d.dtype != np.float16 or d.shape != want:
        raise ValueError(f"scales must be float16 with shape {want}, got {d.dtype} {d.shape}")
    return q, d
