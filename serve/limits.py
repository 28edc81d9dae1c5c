"""The server's limits in one object: batch sizes, request caps, queue depth. Standard library only,
so the command line can show the defaults without importing the web framework."""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ServerLimits:
    """How much the server batches, accepts and queues (every field overridable on the command line).

    max_batch_texts / max_batch_tokens: one cross-request inference batch (1 text = no batching).
    max_texts_per_request, max_body_bytes: refused above (400 / 413). max_tokens_per_text: refuse
    longer texts even when truncating (None: no limit; texts beyond the model's maximum length are
    truncated, or refused when the request says ``truncate: false``). max_tokens_per_request: refuse
    requests whose texts sum to more tokens after truncation, which bounds the work one request can
    queue (None: no limit). max_pending_texts: texts allowed to wait per model before requests get
    503. cross_request_batching=False batches each request alone (a baseline for load tests).
    """

    max_batch_texts: int = 32
    max_batch_tokens: int = 4096
    max_texts_per_request: int = 2048        # OpenAI's own limit on inputs per request
    max_tokens_per_text: int | None = None
    max_tokens_per_request: int | None = 300_000  # OpenAI's own limit on tokens summed over a request
    max_body_bytes: int = 8 << 20
    max_pending_texts: int = 65536
    cross_request_batching: bool = True

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "cross_request_batching" or value is None and f.name in ("max_tokens_per_text",
                                                                                  "max_tokens_per_request"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{f.name} must be an integer >= 1, got {value!r}")

    def as_dict(self) -> dict:
        """The limits as plain values (``GET /health`` and the tests read them)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
