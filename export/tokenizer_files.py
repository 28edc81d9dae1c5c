"""Ship the sentencepiece tokenizer beside tokenizer.json, only if it reproduces tokenizer.json's ids."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from runtime.tokenizer import HFTokenizer, SentencePieceTokenizer

log = logging.getLogger("export")

# Strings where the two backends could plausibly differ: added-token literals inside text,
# whitespace runs, normalisation-sensitive characters, several scripts.
CHECK_STRINGS = [
    "Which planet is known as the Red Planet?", "task: search result | query: hello", "title: none | text: x",
    "<bos> inside", "a<eos>b", "<<bos>>", "<pad><pad>", "<start_of_turn>user\nhi<end_of_turn>", "<unused5>x",
    "[multimodal] hi", "a\u2581\u2581b \u2581 c", "\n\n\n\nx\n", "   ", "", "tab\there", "\u00a0nbsp", "\ufb01 ligature",
    "A\u030a vs \u00c5", "Größe 日本語 中文 русский العربية हिन्दी 한국어 🎉👩‍💻", "def f(x):\n    return x  # code",
    "x" * 3000,
]


def ship_sentencepiece(checkpoint: Path, stage: Path, hf_tokenizer, max_length: int) -> dict | None:
    """Copy tokenizer.model and the added-token table into ``stage``; manifest section or None."""
    source = checkpoint / "tokenizer.model"
    if not source.is_file():
        return None
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        log.warning("sentencepiece is not installed: the artifact carries tokenizer.json only "
                    "(runtime memory ~280 MB higher); pip install sentencepiece to ship the small tokenizer")
        return None
    added = hf_tokenizer.backend_tokenizer.get_added_tokens_decoder()
    odd = [t.content for t in added.values() if t.normalized or t.lstrip or t.rstrip or t.single_word]
    if odd:
        log.warning("added tokens with normalisation or stripping rules (%s...) cannot be emulated exactly; "
                    "shipping tokenizer.json only", odd[:3])
        return None
    section = {"model_file": "tokenizer.model", "added_tokens_file": "added_tokens.json",
               "bos_id": int(hf_tokenizer.bos_token_id), "eos_id": int(hf_tokenizer.eos_token_id)}
    shutil.copyfile(source, stage / section["model_file"])
    added_tokens = {t.content: int(i) for i, t in sorted(added.items())}
    (stage / section["added_tokens_file"]).write_text(json.dumps(added_tokens, ensure_ascii=False), encoding="utf-8")
    reference = HFTokenizer(stage / "tokenizer.json", max_length)
    candidate = SentencePieceTokenizer(stage / section["model_file"], added_tokens, section["bos_id"],
                                       section["eos_id"], max_length)
    if reference.encode_batch(CHECK_STRINGS) != candidate.encode_batch(CHECK_STRINGS):
        log.warning("sentencepiece ids differ from tokenizer.json's on the check strings; shipping tokenizer.json only")
        for name in (section["model_file"], section["added_tokens_file"]):
            (stage / name).unlink()
        return None
    return section
