"""Length-grouped batches: which texts share one onnxruntime run, and how they are padded.

One rule for every caller: ``runtime.Embedder``, the quant stage's calibration pass and the
server's batcher (which mixes requests, so it groups before it calls the Embedder).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

#: A batch is split where the next (shorter) text would be padded by more than this share of the
#: batch's longest text, once the batch has ``SPLIT_MIN_ROWS`` texts: every padded token costs a full
#: pass through the linear layers, while a second, smaller run costs little (docs/notes/bench.md).
SPLIT_PADDING = 0.1
SPLIT_MIN_ROWS = 8
#: ... unless the next text would be padded by more than this many tokens: then the split happens
#: below ``SPLIT_MIN_ROWS`` too (a long document padding many short queries; docs/notes/serve.md).
SPLIT_FREE_PADDING = 64


def length_batches(lengths: Sequence[int], max_rows: int, max_tokens: int, max_padding: float = SPLIT_PADDING,
                   min_rows: int = SPLIT_MIN_ROWS, free_padding: int = SPLIT_FREE_PADDING) -> Iterator[np.ndarray]:
    """Indices of ``lengths`` grouped by similar length, longest first, each index once.

    A batch ends at ``max_rows`` texts, before its padded size (rows x longest) would pass
    ``max_tokens``, or where the next text is more than ``max_padding`` (a share) shorter than the
    batch's longest, once the batch has ``min_rows`` texts or that text would be padded by more than
    ``free_padding`` tokens. A text longer than ``max_tokens`` gets a batch of its own.
    """
    if max_rows < 1 or max_tokens < 1:
        raise ValueError(f"max_rows and max_tokens must be positive, got {max_rows} and {max_tokens}")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batch: list[int] = []
    for i in order:
        # sorted descending, so the first member sets the padded width of the batch
        width = lengths[batch[0]] if batch else lengths[i]
        if batch and (len(batch) == max_rows or (len(batch) + 1) * width > max_tokens
                      or (lengths[i] < width * (1 - max_padding)
                          and (len(batch) >= min_rows or width - lengths[i] > free_padding))):
            yield np.asarray(batch)
            batch = []
        batch.append(int(i))
    if batch:
        yield np.asarray(batch)


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64 [rows, longest]) for token-id lists of any length:
    ids padded on the right with ``pad_id``, mask 1 on real tokens and 0 on padding."""
    width = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask
