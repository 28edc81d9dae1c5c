"""The corpus job's own errors: each names the problem and the way out."""
from __future__ import annotations


class CorpusError(RuntimeError):
    """A corpus job cannot start or finish: bad input location, column, setting or accounting."""


class OutputConflictError(CorpusError):
    """The output folder holds results this job would overwrite or mix with (pass ``force`` to replace)."""
