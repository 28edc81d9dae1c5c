"""The last step of every embedding (Matryoshka size, then unit length) and the cosines the stages
compare vectors with. One owner for both, so the runtime, the server, the quant and export checks,
the quality suite and the benchmarks cannot drift apart. numpy only.
"""
from __future__ import annotations

import numpy as np

#: Norms below this count as zero: a zero row stays zero instead of becoming NaN.
NORM_FLOOR = 1e-12


def l2_normalize(x: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """Rows of ``x`` (float32) scaled to unit L2 norm; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), NORM_FLOOR)
    if in_place:
        x /= norms
        return x
    return x / norms


def finish(raw: np.ndarray, dim: int, normalize: bool = True) -> np.ndarray:
    """What a caller receives from full-size model rows: the first ``dim`` values (Matryoshka), made
    unit length when ``normalize``; a new contiguous float32 array, ``raw`` is left as it is."""
    out = np.array(np.asarray(raw)[..., :dim], dtype=np.float32, copy=True)
    if normalize:
        l2_normalize(out, in_place=True)
    return np.ascontiguousarray(out)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of row i of ``a`` with row i of ``b`` (neither assumed unit length)."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare vectors of shapes {a.shape} and {b.shape}")
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of every row of ``a`` with every row of ``b``: shape [len(a), len(b)]."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"cannot compare embeddings of dim {a.shape[-1]} and {b.shape[-1]}")
    return l2_normalize(a) @ l2_normalize(b).T
