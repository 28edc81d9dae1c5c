"""What a corpus job computes: the columns it reads and how it embeds them.

Everything that changes a vector or the set of rows in a shard is in ``JobSettings.fingerprint``;
a finished shard is reused only when its recorded fingerprint equals the job's.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: Rows per output shard: the unit of work, of resume and of retry.
DEFAULT_ROWS_PER_SHARD = 4096
#: Rows handed to one ``Embedder.encode`` call inside a shard: the length-sorted batching works
#: within this window, and the progress bar moves once per window.
ENCODE_WINDOW_ROWS = 512


@dataclass(frozen=True)
class ArtifactIdentity:
    """Which artifact made the vectors: its variant and the sha256 of its manifest (embedder.json)."""

    path: str
    variant: str
    manifest_sha256: str


@dataclass(frozen=True)
class JobSettings:
    """Columns and embedding options of one corpus job (the same on every worker)."""

    artifact: ArtifactIdentity
    dim: int
    text_column: str = "text"
    id_column: str | None = None
    title_column: str | None = None
    prompt_name: str | None = None
    normalize: bool = True
    truncate: bool = True
    batch_size: int = 32
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    encode_window_rows: int = ENCODE_WINDOW_ROWS
    threads: int | None = None
    verify: bool = True
    input_format: str | None = None

    def fingerprint(self) -> dict:
        """The settings a finished shard must share with this job to be reused (threads, verify and the
        artifact's path are left out: they do not change the vectors)."""
        return {
            "variant": self.artifact.variant, "manifest_sha256": self.artifact.manifest_sha256, "dim": self.dim,
            "text_column": self.text_column, "id_column": self.id_column, "title_column": self.title_column,
            "prompt_name": self.prompt_name, "normalize": self.normalize, "truncate": self.truncate,
            "batch_size": self.batch_size, "rows_per_shard": self.rows_per_shard,
            "encode_window_rows": self.encode_window_rows,
        }

    def to_dict(self) -> dict:
        """Plain data, to ship the settings to a worker."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "JobSettings":
        """The inverse of ``to_dict``."""
        return cls(**dict(data, artifact=ArtifactIdentity(**data["artifact"])))
