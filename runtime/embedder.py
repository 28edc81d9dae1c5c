"""``Embedder``: load one artifact folder and turn texts into EmbeddingGemma vectors.

Depends on onnxruntime, tokenizers and numpy only.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from .artifact import ArtifactError, read_manifest, session_config, verify_files
from .batching import length_batches, pad_batch
from .cpu import check_artifact
from .progress import progress_bar
from .prompts import with_prompts
from .tokenizer import load_tokenizer
from .vectors import cosine_matrix, finish


def runtime_session_options(threads: int | None = None, low_memory: bool = True,
                            base: ort.SessionOptions | None = None,
                            config: dict[str, str] | None = None) -> ort.SessionOptions:
    """The onnxruntime session options ``Embedder`` runs a model with: ``base`` (or new options with
    the CPU memory arena and memory patterns off when ``low_memory``), ``threads`` intra-op threads
    when given, one inter-op thread, and the artifact's ``config`` entries (``runtime.artifact.session_config``).
    The quant stage times models with the same options."""
    options = base
    if options is None:
        options = ort.SessionOptions()
        if low_memory:
            options.enable_cpu_mem_arena = False
            options.enable_mem_pattern = False
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    return options


def release_freed_heap() -> None:
    """Hand memory freed while the session loaded back to the operating system (glibc's
    ``malloc_trim``; nothing elsewhere). Folding weights decoded at load frees every intermediate
    tensor, but glibc keeps the freed heap, which can be several times the weights (docs/notes/devices.md)."""
    if sys.platform != "linux":
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # musl and other C libraries: no malloc_trim
        pass


class TruncationWarning(UserWarning):
    """Some texts were longer than the model's maximum length and were cut.

    ``indices`` (positions in the call's input), ``total`` (texts in the call) and ``limit`` (the
    maximum length in tokens) say which, so callers count or word them without parsing the message.
    """

    def __init__(self, message: str, *, indices: Sequence[int] = (), total: int = 0, limit: int = 0):
        super().__init__(message)
        self.indices, self.total, self.limit = tuple(indices), total, limit


class TextTooLongError(ValueError):
    """Texts exceed the maximum length and ``truncate=False`` was asked for (``indices``, ``limit``)."""

    def __init__(self, message: str, *, indices: Sequence[int] = (), limit: int = 0):
        super().__init__(message)
        self.indices, self.limit = tuple(indices), limit


class Embedder:
    """Embed texts with an EmbeddingGemma ONNX artifact folder (any variant).

    >>> emb = Embedder("artifacts/fp32")
    >>> q = emb.encode_query("Which planet is known as the Red Planet?")
    >>> d = emb.encode_document(["Mars is red.", "Venus is hot."])
    >>> emb.similarity(q, d)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        verify: bool = True,
        max_batch_tokens: int = 8192,
        tokenizer: str = "auto",
        low_memory: bool = True,
        session_options: ort.SessionOptions | None = None,
    ):
        """Load the artifact at ``path``.

        threads: onnxruntime intra-op threads (default: all cores). providers: onnxruntime execution
        providers (default CPU). verify: check every file's sha256 against the manifest (set False to
        skip hashing, e.g. for fast restarts; sizes are always checked). max_batch_tokens: cap on
        padded tokens per inference batch, which bounds attention memory on long texts.
        tokenizer: "auto" (sentencepiece when installed and shipped: a fraction of tokenizer.json's
        memory, identical ids), "sentencepiece" or "tokenizers". low_memory: turn off onnxruntime's
        CPU memory arena and memory patterns, whose buffers grow with every new batch shape
        (docs/notes/quant.md has the memory measurements); ignored with session_options. The
        artifact's own session config entries (``onnx.session_config``) are added to either.
        """
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        verify_files(self.path, self.manifest, check_hashes=verify)
        check_artifact(self.path, self.manifest)
        m = self.manifest
        self.dim: int = int(m["embedding"]["dim"])
        self.dims: tuple[int, ...] = tuple(int(d) for d in m["embedding"]["matryoshka_dims"])
        self.max_seq_length: int = int(m["max_seq_length"])
        self.prompts: dict[str, str] = dict(m["prompts"])
        self.default_prompt_name: str | None = m.get("default_prompt_name")
        self.variant: str = m.get("variant", "unknown")
        if max_batch_tokens < self.max_seq_length:
            raise ValueError(f"max_batch_tokens={max_batch_tokens} must be at least max_seq_length={self.max_seq_length}")
        self.max_batch_tokens = max_batch_tokens

        self._tokenizer = load_tokenizer(self.path, m, tokenizer)
        self.tokenizer_backend: str = self._tokenizer.name
        self._pad_id = int(m.get("pad_token_id", 0))

        options = runtime_session_options(threads, low_memory, session_options, session_config(m))
        try:
            self._session = ort.InferenceSession(
                str(self.path / m["model_file"]), sess_options=options,
                providers=list(providers) if providers else ["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime raises its own opaque exception types
            raise ArtifactError(f"onnxruntime could not load {self.path / m['model_file']}: {exc}") from exc
        release_freed_heap()
        self._output_name = m["onnx"]["outputs"][0]["name"]

    def __repr__(self) -> str:
        return f"Embedder({str(self.path)!r}, variant={self.variant!r}, dim={self.dim}, tokenizer={self.tokenizer_backend!r})"

    # ---- public API -------------------------------------------------------------------------

    def encode(
        self,
        texts: str | Sequence[str],
        prompt_name: str | None = None,
        *,
        prompt: str | None = None,
        titles: str | Sequence[str | None] | None = None,
        dim: int | None = None,
        normalize: bool = True,
        batch_size: int = 32,
        truncate: bool = True,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Embed one text (-> 1-D vector) or a list of texts (-> 2-D float32 array, input order).

        prompt_name picks one of the model's prompts (see ``self.prompts``); prompt gives literal
        prefix text instead; titles (one per text, or None) fill the document prompt's title slot.
        dim is a Matryoshka size (see ``self.dims``); the result is re-normalised when ``normalize``.
        Texts longer than ``max_seq_length`` tokens are truncated with a ``TruncationWarning``, or
        raise ``TextTooLongError`` when ``truncate=False``.
        """
        single = isinstance(texts, str)
        prefixed = self.prompted(texts, prompt_name, prompt=prompt, titles=titles)
        return self._encode_prefixed(prefixed, single, dim=dim, normalize=normalize,
                                     batch_size=batch_size, truncate=truncate, show_progress=show_progress)

    def encode_query(self, texts: str | Sequence[str], **kwargs) -> np.ndarray:
        """Embed search queries with the model's ``query`` prompt."""
        return self.encode(texts, prompt_name="query", **kwargs)

    def encode_document(self, texts: str | Sequence[str], titles: str | Sequence[str | None] | None = None,
                        **kwargs) -> np.ndarray:
        """Embed documents with the model's ``document`` prompt, ``title: {title or none} | text: ``."""
        return self.encode(texts, prompt_name="document", titles=titles, **kwargs)

    def prompted(self, texts: str | Sequence[str], prompt_name: str | None = None, *, prompt: str | None = None,
                 titles: str | Sequence[str | None] | None = None) -> list[str]:
        """The exact strings the model reads for ``texts``: each with its prompt (and title) in front
        (``runtime.prompts.with_prompts``). Raises ``PromptError`` or ``TypeError`` on bad input."""
        return with_prompts(self._check_texts(texts), self.prompts, prompt_name=prompt_name, prompt=prompt,
                            titles=titles, default_prompt_name=self.default_prompt_name)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity matrix [len(a), len(b)] between 1-D or 2-D embeddings."""
        return cosine_matrix(a, b)

    def count_tokens(self, texts: Sequence[str], prompt_name: str | None = None, *, prompt: str | None = None,
                     truncate: bool = True) -> list[int]:
        """Token counts (prompt, BOS and EOS included) the model sees; ``truncate=False`` gives the
        full length before truncation, to tell which texts are too long."""
        prefixed = self.prompted(texts, prompt_name, prompt=prompt)
        if not truncate:
            return self._tokenizer.full_lengths(prefixed)
        return [len(x) for x in self._tokenizer.encode_batch(prefixed)[0]]

    # ---- internals --------------------------------------------------------------------------

    @staticmethod
    def _check_texts(texts) -> list[str]:
        if isinstance(texts, str):
            return [texts]
        if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence) and not hasattr(texts, "__iter__"):
            raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
        items = list(texts)
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
        return items

    def _encode_prefixed(self, texts: list[str], single: bool, *, dim: int | None = None, normalize: bool = True,
                         batch_size: int = 32, truncate: bool = True, show_progress: bool = False) -> np.ndarray:
        dim = self.dim if dim is None else dim
        if dim not in self.dims:
            raise ValueError(f"unsupported dim {dim!r}; this model supports {', '.join(map(str, self.dims))}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)

        encodings, cut = self._tokenizer.encode_batch(texts)
        if cut:
            limit = self.max_seq_length
            if not truncate:
                raise TextTooLongError(f"{len(cut)} text(s) exceed {limit} tokens (first: texts[{cut[0]}]); "
                                       "shorten them or pass truncate=True", indices=cut, limit=limit)
            warnings.warn(TruncationWarning(
                f"{len(cut)} of {len(texts)} text(s) exceed {limit} tokens and were truncated (first: "
                f"texts[{cut[0]}]); pass truncate=False to get an error instead",
                indices=cut, total=len(texts), limit=limit), stacklevel=3)

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        batches = length_batches([len(e) for e in encodings], max_rows=batch_size, max_tokens=self.max_batch_tokens)
        with progress_bar(len(texts), "embedding", show_progress, unit="text") as bar:
            for idx in batches:
                ids, mask = pad_batch([encodings[i] for i in idx], self._pad_id)
                out[idx] = self._session.run([self._output_name], {"input_ids": ids, "attention_mask": mask})[0]
                bar.update(len(idx))
        out = finish(out, dim, normalize)
        return out[0] if single else out
