"""``--engine local``: one process, one ``Embedder`` using all cores (or ``threads``), shards in plan order."""
from __future__ import annotations

from typing import Callable

from .output_folder import OutputFolder
from .plan import ShardSpec
from .settings import JobSettings
from .worker import load_embedder, process_shard


def run_local(pending: list[ShardSpec], settings: JobSettings, output: OutputFolder, artifact_path: str,
              on_rows: Callable[[int], None], log: Callable[[str], None]) -> list[dict]:
    """Embed every pending shard in this process; returns each shard's counts."""
    embedder = load_embedder(artifact_path, settings)
    log(f"engine local: one process, {settings.threads or 'all'} onnxruntime threads")
    return [process_shard(spec, embedder, settings, output, on_rows) for spec in pending]
