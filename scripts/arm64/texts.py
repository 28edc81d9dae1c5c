"""The small fixed text set the arm64 check embeds under emulation (where one real-model encode of
a dozen short texts takes over a minute), chosen from the parity corpus by a fixed rule.

Rule: in corpus order, the first ``short`` or ``sentence`` text of each language (the corpus's
``lang`` field, so "mixed" and "emoji" count as languages), ``count`` of them; then, unless
``long=False``, the first ``long`` text cut at its last line break within :data:`LONG_CHARS`
characters (long_en_design_doc: 1,363 characters, 300 tokens with EmbeddingGemma's tokenizer).
Runs on the host (never inside the arm64 root).
"""
from __future__ import annotations

import json
from pathlib import Path

from quant.fidelity import DEFAULT_TEXTS

#: The parity corpus (81 texts with id, lang, kind), owned by quant.fidelity.
CORPUS = DEFAULT_TEXTS
#: Default number of short multilingual texts (the ~300-token text comes on top).
DEFAULT_COUNT = 12
#: Characters of the long text that are kept (cut back to a line break).
LONG_CHARS = 1400


def emulation_texts(count: int = DEFAULT_COUNT, long: bool = True, corpus: Path = CORPUS) -> list[dict]:
    """``count`` short texts and the long one (each ``{"id", "lang", "text"}``) by the module's rule."""
    items = json.loads(Path(corpus).read_text(encoding="utf-8"))
    shorts, seen = [], set()
    for item in items:
        if item["kind"] in ("short", "sentence") and item["lang"] not in seen:
            seen.add(item["lang"])
            shorts.append(item)
    if not 0 <= count <= len(shorts) or count + long == 0:
        raise ValueError(f"--texts must be between {0 if long else 1} and {len(shorts)} (the corpus has short texts "
                         f"in {len(shorts)} languages), got {count}")
    chosen = [_pick(s) for s in shorts[:count]]
    if long:
        item = next(item for item in items if item["kind"] == "long")
        head = item["text"][:LONG_CHARS].rsplit("\n", 1)[0]
        chosen.append(dict(_pick(item), id=item["id"] + "[:300 tokens]", text=head))
    return chosen


def _pick(item: dict) -> dict:
    return {"id": item["id"], "lang": item["lang"], "text": item["text"]}
