"""How block codes are laid out for onnxruntime: ``com.microsoft.MatMulNBits`` and the standard-op
decoders in ``quant.graph`` read the same bytes.

Every code is stored unsigned with the zero point ``2**(bits-1)`` (so decoding is ``(u - zp) * d``,
ggml's value bit for bit), one block after another, ``32 * bits / 8`` bytes per block:

* 8 bits: one byte per code.
* 4 bits: byte i of a block holds element 2i in its low nibble and 2i+1 in its high nibble
  (MatMulNBits' order; ggml's own Q4_0 file layout pairs element i with i+16 instead).
* 5-7 bits: the low four bits as for 4 bits (16 bytes), then one plane per higher bit, 32 bits
  packed 8 per byte, element j in bit j % 8 of byte j // 8 (4 bytes per plane).

The scales are the float16 ggml scales; MatMulNBits takes them widened to float32 (exact).
"""
from __future__ import annotations

import numpy as np

from .formats import BLOCK_SIZE, BlockFormat, check_pair

_NIBBLE_BITS = 4


def unsigned_codes(fmt: BlockFormat, q: np.ndarray) -> np.ndarray:
    """Codes of ``fmt`` as onnxruntime's unsigned storage values ``signed + 2**(bits-1)``."""
    if fmt.offset == fmt.zero_point:
        return np.asarray(q, np.uint8)
    if fmt.offset == 0 and fmt.bits == 8:
        return np.asarray(q).view(np.uint8) ^ np.uint8(0x80)   # int8 v -> v + 128: the sign bit flips
    return (fmt.signed(q).astype(np.int16) + fmt.zero_point).astype(np.uint8)


def pack_blocks(fmt: BlockFormat, q: np.ndarray) -> np.ndarray:
    """uint8 ``[..., cols/32, 32*bits/8]``: each block's codes packed as the module docstring says."""
    u = unsigned_codes(fmt, q)
    blocks = u.reshape(*u.shape[:-1], -1, BLOCK_SIZE)
    if fmt.bits == 8:
        return np.ascontiguousarray(blocks)
    low = blocks & np.uint8(0x0F)
    parts = [low[..., 0::2] | (low[..., 1::2] << np.uint8(_NIBBLE_BITS))]
    for bit in range(_NIBBLE_BITS, fmt.bits):
        parts.append(np.packbits((blocks >> np.uint8(bit)) & np.uint8(1), axis=-1, bitorder="little"))
    return np.ascontiguousarray(np.concatenate(parts, axis=-1))


def unpack_blocks(fmt: BlockFormat, packed: np.ndarray) -> np.ndarray:
    """Inverse of ``pack_blocks``: unsigned codes ``[..., cols]`` (the tests' and the decoders' reference)."""
    packed = np.asarray(packed, np.uint8)
    if fmt.bits == 8:
        return packed.reshape(*packed.shape[:-2], -1)
    half = BLOCK_SIZE // 2
    nib = packed[..., :half]
    u = np.empty((*packed.shape[:-1], BLOCK_SIZE), np.uint8)
    u[..., 0::2], u[..., 1::2] = nib & np.uint8(0x0F), nib >> np.uint8(_NIBBLE_BITS)
    plane_bytes = BLOCK_SIZE // 8
    for i, bit in enumerate(range(_NIBBLE_BITS, fmt.bits)):
        plane = packed[..., half + i * plane_bytes: half + (i + 1) * plane_bytes]
        u |= np.unpackbits(plane, axis=-1, bitorder="little") << np.uint8(bit)
    return u.reshape(*u.shape[:-2], -1)


def to_matmulnbits(fmt: BlockFormat, q, d) -> tuple[np.ndarray, np.ndarray]:
    """A torch-Linear weight W [N_out, K_in] for ``com.microsoft.MatMulNBits``.

    Returns ``(B uint8 [N, K/32, 32*bits/8], scales float32 [N, K/32])`` for a node with
    ``matmulnbits_attributes(N, K, fmt)`` and no zero_points input: onnxruntime then uses the zero
    point 2**(bits-1), which reproduces ggml's symmetric codes. The node computes
    ``Y = A @ dequant(B).T`` (A [..., K] -> Y [..., N]).
    """
    if not fmt.matmulnbits:
        raise ValueError(f"{fmt.name} does not run as MatMulNBits; decode it with quant.graph's standard ops")
    q, d = check_pair(fmt, q, d, ndim=2)
    return pack_blocks(fmt, q), d.astype(np.float32)


def matmulnbits_attributes(n: int, k: int, fmt: BlockFormat, accuracy_level: int = 0) -> dict[str, int]:
    """Attributes of the MatMulNBits node that consumes ``to_matmulnbits`` output.

    accuracy_level 0 decodes exactly (fp32 compute); 4 quantizes the activations to int8 per block
    and is not exact (docs/notes/formats.md).
    """
    return {"K": int(k), "N": int(n), "bits": fmt.bits, "block_size": BLOCK_SIZE, "accuracy_level": int(accuracy_level)}
