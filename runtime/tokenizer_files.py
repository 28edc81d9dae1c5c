"""Which tokenizer files an artifact folder ships, and how its manifest names them.

Export writes tokenizer.json (read by ``tokenizers`` and by the browser) and, where it gives the same
ids, tokenizer.model + added_tokens.json (``sentencepiece``: 4.7 MB against 33 MB, tens of MB resident
against hundreds). A folder built from an artifact (quant, mobile) keeps both or only one of them;
the runtime loads any of these forms (``runtime.tokenizer.load_tokenizer``).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

#: all: every tokenizer file the source has; auto: one file, tokenizer.model where the source has
#: it, else tokenizer.json; sentencepiece / tokenizers: that one file.
CHOICES = ("all", "auto", "sentencepiece", "tokenizers")


def tokenizer_files(manifest: dict) -> list[str]:
    """Every tokenizer file the manifest names: tokenizer.json and the sentencepiece pair, where present."""
    names = [manifest["tokenizer_file"]] if manifest.get("tokenizer_file") else []
    sp = manifest.get("sentencepiece") or {}
    return names + [sp[key] for key in ("model_file", "added_tokens_file") if sp.get(key)]


def resolve_choice(manifest: dict, choice: str) -> str:
    """``all``, ``sentencepiece`` or ``tokenizers``: what ``choice`` ships from the folder ``manifest``
    describes; ``ValueError`` naming the fix when the folder lacks it (check before long work)."""
    if choice not in CHOICES:
        raise ValueError(f"unknown tokenizer choice {choice!r}; choose one of {', '.join(CHOICES)}")
    sp = manifest.get("sentencepiece")
    if choice == "auto":
        return "sentencepiece" if sp else "tokenizers"
    if choice == "sentencepiece" and not sp:
        raise ValueError("the input ships no sentencepiece model (its checkpoint had no tokenizer.model, or export "
                         "found its ids differ from tokenizer.json's); choose tokenizers")
    if choice == "tokenizers" and not manifest.get("tokenizer_file"):
        raise ValueError("the input ships no tokenizer.json (only the sentencepiece model); choose sentencepiece")
    return choice


def ship_tokenizer(source: str | Path, manifest: dict, stage: str | Path, choice: str = "all") -> dict:
    """Copy the tokenizer files ``choice`` keeps from the folder ``source`` (described by ``manifest``)
    into ``stage``; return a copy of ``manifest`` whose tokenizer entries name only those.

    A folder with sentencepiece alone carries the added tokens inline (one tokenizer file).
    """
    source, stage = Path(source), Path(stage)
    kind = resolve_choice(manifest, choice)
    out = dict(manifest)
    if kind == "all":
        for name in tokenizer_files(manifest):
            shutil.copy2(source / name, stage / name)
    elif kind == "sentencepiece":
        sp = manifest["sentencepiece"]
        shutil.copy2(source / sp["model_file"], stage / sp["model_file"])
        section = {k: v for k, v in sp.items() if k != "added_tokens_file"}
        if sp.get("added_tokens_file"):
            section["added_tokens"] = json.loads((source / sp["added_tokens_file"]).read_text(encoding="utf-8"))
        out["sentencepiece"] = section
        out.pop("tokenizer_file", None)
    else:
        shutil.copy2(source / manifest["tokenizer_file"], stage / manifest["tokenizer_file"])
        out.pop("sentencepiece", None)
    return out
