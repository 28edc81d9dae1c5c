"""Text -> token ids for the runtime, with two interchangeable backends.

``tokenizers`` reads tokenizer.json (always present) but holds Gemma's 262k-entry vocabulary and
515k merges in several times the memory ``sentencepiece`` needs for the small tokenizer.model,
which is also faster (docs/notes/quant.md has the measurements). To give ids identical to the
reference, the sentencepiece backend first splits text on the checkpoint's
added tokens exactly as tokenizers does (leftmost-longest literal match) and encodes the pieces
between them; export verifies the two backends agree before it ships tokenizer.model.
"""
from __future__ import annotations

import json
import re
from pathlib import Path


class HFTokenizer:
    """The ``tokenizers`` backend (tokenizer.json): BOS/EOS and truncation from its post-processor."""

    name = "tokenizers"

    def __init__(self, path: Path, max_length: int):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length)

    def encode_batch(self, texts: list[str]) -> tuple[list[list[int]], list[int]]:
        """Ids per text (with BOS/EOS, truncated) and the indices of texts that were truncated."""
        encodings = self._tok.encode_batch(texts)
        return [e.ids for e in encodings], [i for i, e in enumerate(encodings) if e.overflowing]

    def full_lengths(self, texts: list[str]) -> list[int]:
        """Token counts before truncation (BOS/EOS counted once), without a second tokenizer copy."""
        out = []
        for e in self._tok.encode_batch(texts):
            # Each overflowing piece repeats the post-processor's special tokens: count them once.
            out.append(len(e.ids) + sum(len(o.ids) - sum(o.special_tokens_mask) for o in e.overflowing))
        return out


class SentencePieceTokenizer:
    """The ``sentencepiece`` backend (tokenizer.model + the checkpoint's added tokens), ids identical to
    tokenizer.json's."""

    name = "sentencepiece"

    def __init__(self, model_path: Path, added_tokens: dict[str, int], bos_id: int, eos_id: int, max_length: int):
        import sentencepiece

        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
        self._added = dict(added_tokens)
        # Longest first: Python's alternation is leftmost-first, so this gives leftmost-longest.
        literals = sorted(self._added, key=len, reverse=True)
        self._split = re.compile("|".join(map(re.escape, literals))) if literals else None
        self._bos, self._eos = bos_id, eos_id
        self._budget = max_length - 2  # BOS and EOS are added after truncation, as tokenizers does

    def _pieces(self, text: str) -> list[int]:
        if self._split is None:
            return self._sp.encode(text)
        ids: list[int] = []
        pos = 0
        for match in self._split.finditer(text):
            if match.start() > pos:
                ids += self._sp.encode(text[pos:match.start()])
            ids.append(self._added[match.group()])
            pos = match.end()
        if pos < len(text):
            ids += self._sp.encode(text[pos:])
        return ids

    def encode_batch(self, texts: list[str]) -> tuple[list[list[int]], list[int]]:
        """Ids per text (with BOS/EOS, truncated) and the indices of texts that were truncated."""
        out, cut = [], []
        for i, text in enumerate(texts):
            ids = self._pieces(text)
            if len(ids) > self._budget:
                cut.append(i)
                ids = ids[: self._budget]
            out.append([self._bos, *ids, self._eos])
        return out, cut

    def full_lengths(self, texts: list[str]) -> list[int]:
        """Token counts before truncation, BOS/EOS included."""
        return [len(self._pieces(t)) + 2 for t in texts]


BACKENDS = ("auto", "sentencepiece", "tokenizers")


def load_tokenizer(folder: Path, manifest: dict, backend: str = "auto"):
    """The requested backend; ``auto`` prefers sentencepiece when installed and shipped in the artifact.

    The sentencepiece section names the model file and the added tokens, as a file
    (``added_tokens_file``) or inline (``added_tokens``, the mobile folder's one-tokenizer-file form).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown tokenizer backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    max_length = int(manifest["max_seq_length"])
    sp = manifest.get("sentencepiece")
    hf_file = manifest.get("tokenizer_file")
    if backend in ("auto", "sentencepiece") and sp:
        try:
            added = sp.get("added_tokens")
            if added is None:
                added = json.loads((folder / sp["added_tokens_file"]).read_text(encoding="utf-8"))
            return SentencePieceTokenizer(folder / sp["model_file"], added, int(sp["bos_id"]), int(sp["eos_id"]),
                                          max_length)
        except ImportError:
            if backend == "sentencepiece" or not hf_file:
                raise ImportError("this artifact's tokenizer needs the sentencepiece package: "
                                  "pip install sentencepiece") from None
    elif backend == "sentencepiece":
        raise ValueError("this artifact ships no sentencepiece model (its checkpoint had no tokenizer.model); "
                         "use tokenizer='tokenizers' or 'auto'")
    if not hf_file:
        raise ValueError("this artifact ships only the sentencepiece tokenizer (tokenizer.model); "
                         "use tokenizer='sentencepiece' or 'auto'")
    return HFTokenizer(folder / hf_file, max_length)
