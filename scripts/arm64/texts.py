"""The small fixed text set the arm64 check embeds under emulation (where one real-model encode of
a dozen short texts takes over a minute), chosen from the parity corpus by a fixed rule.

Rule: in corpus order, the first ``short`` or ``sentence`` text of each language (the corpus's
``lang`` field, so "mixed" and "emoji" count as languages) until ``count - 1`` texts are taken;
then the first ``long`` text cut at its last line break within :data:`LONG_CHARS` characters
(long_en_design_doc: 1,363 characters, 300 tokens with EmbeddingGemma's tokenizer). Standard library only.
"""
from __future__ import annotations

import json
from pathlib import Path

#: The export's parity corpus (81 texts with id, lang, kind), the texts the quant targets are defined on.
CORPUS = Path(__file__).resolve().parents[2] / "tests" / "data" / "parity_texts.json"
#: Default set size: 12 short multilingual texts and one ~300-token text.
DEFAULT_COUNT = 13
#: Characters of the long text that are kept (cut back to a line break).
LONG_CHARS = 1400


def emulation_texts(count: int = DEFAULT_COUNT, corpus: Path = CORPUS) -> list[dict]:
    """``count`` texts (each ``{"id", "lang", "text"}``) by the module's rule; the long one is last."""
    items = json.loads(Path(corpus).read_text(encoding="utf-8"))
    shorts, seen = [], set()
    for item in items:
        if item["kind"] in ("short", "sentence") and item["lang"] not in seen:
            seen.add(item["lang"])
            shorts.append(item)
    if not 1 <= count <= len(shorts) + 1:
        raise ValueError(f"--texts must be between 1 and {len(shorts) + 1} (the corpus has short texts in "
                         f"{len(shorts)} languages, plus one long text), got {count}")
    if count == 1:
        return [_pick(shorts[0])]
    long_item = next(item for item in items if item["kind"] == "long")
    head = long_item["text"][:LONG_CHARS].rsplit("\n", 1)[0]
    return [_pick(s) for s in shorts[: count - 1]] + [dict(_pick(long_item), id=long_item["id"] + "[:300 tokens]",
                                                          text=head)]


def _pick(item: dict) -> dict:
    return {"id": item["id"], "lang": item["lang"], "text": item["text"]}
