"""Which of the model's prompts a task uses, resolved exactly as mteb (>= 2) resolves it.

mteb's ``get_prompt_name`` (``mteb/models/abs_encoder.py``) looks the keys up in this order and takes
the first one the model has:

1. ``{task name}-{prompt type}``     e.g. ``SciFact-query``
2. ``{task name}``
3. ``{task type}-{prompt type}``     e.g. ``Retrieval-query``, ``Retrieval-document``
4. ``{task type}``                   e.g. ``STS``, ``Classification``, ``Clustering``, ``Reranking``
5. ``{prompt type}``                 ``query`` or ``document``

and uses no prompt when none matches. The prompt type is ``query`` / ``document`` for the two sides
of retrieval and reranking and ``None`` for STS, classification and clustering. With EmbeddingGemma's
prompts this gives: retrieval queries ``Retrieval-query``, retrieval documents ``Retrieval-document``,
STS ``STS``, classification ``Classification``, clustering ``Clustering``, and for reranking *both*
queries and candidate documents ``Reranking`` (step 4 wins over step 5 for documents too, so mteb
embeds reranking candidates with the query prompt). A model without a key simply falls through, e.g.
a model with no ``Reranking`` prompt uses ``query`` and ``document``.

This module has no mteb import so the suite stays light; ``tests/test_mteb_adapter.py`` checks it
against mteb's own function when mteb is installed.
"""
from __future__ import annotations

from typing import Mapping

PROMPT_TYPES = ("query", "document")


def resolve_prompt_name(model_prompts: Mapping[str, str] | None, task_name: str | None, task_type: str | None,
                        prompt_type: str | None) -> str | None:
    """The key of ``model_prompts`` that mteb would use for this task and side, or None."""
    if prompt_type is not None and prompt_type not in PROMPT_TYPES:
        raise ValueError(f"prompt_type must be one of {PROMPT_TYPES} or None, got {prompt_type!r}")
    if not model_prompts:
        return None
    candidates = []
    if task_name and prompt_type:
        candidates.append(f"{task_name}-{prompt_type}")
    if task_name:
        candidates.append(task_name)
    if task_type and prompt_type:
        candidates.append(f"{task_type}-{prompt_type}")
    if task_type:
        candidates.append(task_type)
    if prompt_type:
        candidates.append(prompt_type)
    for key in candidates:
        if key in model_prompts:
            return key
    return None
