"""Torch-free EmbeddingGemma runtime: onnxruntime + tokenizers + numpy.

    from runtime import Embedder
    emb = Embedder("artifacts/q4_0")
    vectors = emb.encode(["first text", "second text"], prompt_name="STS", dim=256)
"""
from .artifact import ArtifactError
from .embedder import Embedder, TextTooLongError, TruncationWarning
from .prompts import PromptError

__all__ = ["Embedder", "ArtifactError", "PromptError", "TextTooLongError", "TruncationWarning"]
__version__ = "0.1.0"
