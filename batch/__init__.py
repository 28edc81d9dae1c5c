"""Corpus-scale embedding: Parquet, JSON Lines or CSV files in, Parquet shards of vectors out, on one
machine (``engine="local"``) or a Ray cluster (``engine="ray"``), resumable and with every row
accounted for.

    from batch import embed_corpus
    report = embed_corpus("corpus/", "vectors/", "artifacts/q4_0", text_column="text",
                          id_column="id", prompt_name="document")
    assert report.balanced

Above the runtime (layer 2): it uses ``runtime.Embedder`` and never the other way round. pyarrow is
needed (the ``corpus`` extra), Ray only for the Ray engine (the ``ray`` extra).
"""
from .errors import CorpusError, OutputConflictError
from .job import CorpusReport, embed_corpus
from .ray_engine import RayOptions

__all__ = ["embed_corpus", "CorpusReport", "CorpusError", "OutputConflictError", "RayOptions"]
