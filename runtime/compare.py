"""Embed fixed texts with an artifact and compare its vectors with reference vectors.

The export's and the quant stage's self-checks, ``quant.fidelity`` and the benchmarks' fidelity
column all ask the same question (how close are this artifact's vectors to those?), so they share
these two functions.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .vectors import row_cosines


def embed_texts(folder: str | Path, texts: Sequence[str], prompt_names: Sequence[str | None] = (None,), *,
                threads: int | None = None, normalize: bool = True) -> dict[str | None, np.ndarray]:
    """Vectors of ``texts`` per prompt name from the artifact at ``folder``, loaded once.

    File hashes are not checked (the callers just wrote or already checked the folder) and truncation
    warnings are silenced: these checks embed over-long texts on purpose.
    """
    from .embedder import Embedder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = Embedder(folder, verify=False, threads=threads)
        return {p: emb.encode(list(texts), prompt_name=p, normalize=normalize) for p in prompt_names}


def cosines_to(reference: Mapping[str | None, np.ndarray], folder: str | Path, texts: Sequence[str], *,
               threads: int | None = None) -> dict[str | None, np.ndarray]:
    """Per prompt name of ``reference``, the cosine of each text's vector from the artifact at
    ``folder`` with the reference vector of the same text."""
    got = embed_texts(folder, texts, tuple(reference), threads=threads)
    return {p: row_cosines(reference[p], got[p]) for p in reference}
