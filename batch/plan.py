"""The shard plan: every input file cut into row ranges of ``rows_per_shard``, each with the output
name it is written under. The plan depends only on the input files and the settings, so a rerun
finds the same shards, and both engines embed exactly the same rows together."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from .errors import CorpusError
from .sources import InputFile, check_columns

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ShardSpec:
    """Rows ``start``..``stop`` of one input file, written as ``<name>.parquet``."""

    name: str
    source: InputFile
    start: int
    stop: int

    @property
    def rows(self) -> int:
        """Rows the shard holds in the input."""
        return self.stop - self.start

    def to_dict(self) -> dict:
        """Plain data, to ship the shard to a worker and to record it in the shard's metadata."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ShardSpec":
        """The inverse of ``to_dict``."""
        return cls(**dict(data, source=InputFile(**data["source"])))


def shard_stem(label: str) -> str:
    """A file-name-safe form of an input file's label: folders joined by ``__``."""
    return "__".join(_UNSAFE.sub("_", part) for part in label.split("/")) or "input"


def plan_shards(files: list[InputFile], rows_per_shard: int, required_columns: list[str]) -> list[ShardSpec]:
    """Shards of every input file in order (an empty file has none); checks the columns on the way."""
    shards: list[ShardSpec] = []
    owners: dict[str, str] = {}
    for source in files:
        stem = shard_stem(source.label)
        where = f"{source.root}/{source.relpath}" if source.relpath else source.root
        if stem in owners:
            raise CorpusError(f"input files {owners[stem]!r} and {where!r} would write the same shards ({stem}); "
                              "pass their common parent folder as the input instead")
        owners[stem] = where
        rows = check_columns(source, required_columns)
        for index, start in enumerate(range(0, rows, rows_per_shard)):
            shards.append(ShardSpec(f"{stem}.{index:05d}", source, start, min(start + rows_per_shard, rows)))
    return shards
