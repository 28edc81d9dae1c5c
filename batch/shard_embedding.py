"""One shard's rows -> vectors and bad rows. Both engines call ``embed_shard`` on a whole shard with
the same settings, so the same rows share the same onnxruntime batches, whichever engine runs them.

Within a shard the good rows are embedded in windows of ``encode_window_rows`` rows, in input order:
the runtime sorts each window by length into its batches, and the progress bar moves per window.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from runtime import TextTooLongError, TruncationWarning

from .plan import ShardSpec
from .settings import JobSettings
from .sources import Records


@dataclass
class EmbeddedShard:
    """A shard's result: ids and vectors of the embedded rows (input order) and one record per bad row."""

    ids: list
    vectors: np.ndarray
    errors: list[dict] = field(default_factory=list)
    truncated: int = 0


def default_ids(spec: ShardSpec) -> list[str]:
    """Ids for inputs without an id column: ``<file label>:<row number in the file>``."""
    return [f"{spec.source.label}:{row}" for row in range(spec.start, spec.stop)]


def row_problem(text, title, row_id, has_id_column: bool) -> str | None:
    """Why a row cannot be embedded (None when it can): null, missing, empty or non-string text, a
    non-string title, a null id, or text that is not valid Unicode."""
    if has_id_column and row_id is None:
        return "id is null or missing"
    if text is None:
        return "text is null or missing"
    if not isinstance(text, str):
        return f"text is {type(text).__name__}, expected a string"
    if not text.strip():
        return "text is empty"
    if title is not None and not isinstance(title, str):
        return f"title is {type(title).__name__}, expected a string or null"
    for what, value in (("text", text), ("title", title)):
        try:
            if value is not None:
                value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{what} is not valid Unicode (an unpaired surrogate)"
    return None


def embed_shard(embedder, spec: ShardSpec, records: Records, settings: JobSettings,
                on_rows: Callable[[int], None] | None = None) -> EmbeddedShard:
    """Embed the good rows of one shard; every other row becomes an error record (id, source, row, reason)."""
    s = settings
    texts = records.columns[s.text_column]
    titles = records.columns[s.title_column] if s.title_column else [None] * records.count
    ids = records.columns[s.id_column] if s.id_column else default_ids(spec)
    where = f"{spec.source.root}/{spec.source.relpath}" if spec.source.relpath else spec.source.root
    errors: list[dict] = []

    def fail(i: int, reason: str) -> None:
        errors.append({"id": ids[i], "source": where, "row": spec.start + i, "reason": reason})

    good = []
    for i in range(records.count):
        problem = records.broken.get(i) or row_problem(texts[i], titles[i], ids[i], s.id_column is not None)
        if problem:
            fail(i, problem)
        else:
            good.append(i)
    if on_rows and len(good) < records.count:
        on_rows(records.count - len(good))

    kept: list[int] = []
    parts: list[np.ndarray] = []
    truncated = 0
    for w in range(0, len(good), s.encode_window_rows):
        window = good[w:w + s.encode_window_rows]
        vectors, window_kept, too_long, cut = _encode_window(embedder, window, texts, titles, settings)
        for i in too_long:
            fail(i, f"text has more than the model's {embedder.max_seq_length} tokens (--no-truncate)")
        kept += window_kept
        parts.append(vectors)
        truncated += cut
        if on_rows:
            on_rows(len(window))
    errors.sort(key=lambda e: e["row"])
    out = np.concatenate(parts) if parts else np.zeros((0, s.dim), dtype=np.float32)
    return EmbeddedShard([ids[i] for i in kept], out, errors, truncated)


def _encode_window(embedder, window: list[int], texts: list, titles: list, s: JobSettings):
    """Vectors of one window's rows; with truncation off, too-long rows are dropped and the rest
    embedded again. Returns (vectors, rows kept, rows too long, rows truncated)."""
    too_long: list[int] = []
    while True:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TruncationWarning)
            try:
                vectors = embedder.encode(
                    [texts[i] for i in window], s.prompt_name,
                    titles=[titles[i] for i in window] if s.title_column else None,
                    dim=s.dim, normalize=s.normalize, batch_size=s.batch_size, truncate=s.truncate)
            except TextTooLongError as exc:
                drop = set(exc.indices)
                too_long += [window[j] for j in sorted(drop)]
                window = [i for j, i in enumerate(window) if j not in drop]
                if not window:
                    return np.zeros((0, s.dim), dtype=np.float32), [], too_long, 0
                continue
        cut = sum(len(w.message.indices) for w in caught if isinstance(w.message, TruncationWarning))
        return vectors, window, too_long, cut
