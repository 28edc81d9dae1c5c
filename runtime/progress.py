"""One progress bar for every long step (embedding, calibration, quantization, benchmarks).

tqdm when it is installed and the caller wants a bar; otherwise an object with the same ``update``
and ``close`` that does nothing, so callers never branch on it.
"""
from __future__ import annotations

import warnings


class NoBar:
    """Stands in for a tqdm bar when no bar is shown."""

    def update(self, n: int = 1) -> None:
        """Ignore progress."""

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "it"):
    """A tqdm bar of ``total`` ``unit``s when ``enabled`` (a warning and no bar if tqdm is missing)."""
    if not enabled:
        return NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warnings.warn("a progress bar needs tqdm (pip install tqdm); continuing without one", stacklevel=2)
        return NoBar()
    return tqdm(total=total, desc=desc, unit=unit)
