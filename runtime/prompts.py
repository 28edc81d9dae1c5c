"""Prompts and document titles: the exact text the model reads for each input.

The one place that turns (texts, prompt name or literal prompt, titles) into model input. The
``Embedder``, the ``embed`` command and the server all call ``with_prompts``, so a text embedded
through any of them gets the same prefix. The prompts themselves come from the checkpoint (carried
in the artifact's manifest), never from here. Standard library only.
"""
from __future__ import annotations

from typing import Mapping, Sequence

#: How EmbeddingGemma's document prompt marks where a title goes (``title: none | text: ``).
TITLE_SLOT = "title: none"


class PromptError(ValueError):
    """A prompt name, literal prompt or title list this model cannot use.

    ``field`` names the argument at fault (``prompt_name``, ``prompt`` or ``titles``) so a caller with
    its own vocabulary (command-line flags, request fields) can point at it.
    """

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def with_prompts(texts: Sequence[str], prompts: Mapping[str, str], *, prompt_name: str | None = None,
                 prompt: str | None = None, titles: Sequence[str | None] | None = None,
                 default_prompt_name: str | None = None) -> list[str]:
    """Each text with its prompt in front: the model's named prompt, a literal ``prompt``, or none.

    ``titles`` (one string or None per text) fill the prompt's ``title: none`` slot and, when no
    prompt is named, select the ``document`` prompt; a falsy title leaves ``title: none``. Without a
    name, prompt or titles the model's ``default_prompt_name`` applies (EmbeddingGemma has none).
    Raises ``PromptError`` (which argument, what is allowed) or ``TypeError`` for a non-string.
    """
    if prompt is not None and prompt_name is not None:
        raise PromptError("give prompt_name or prompt, not both", "prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    title_list = _check_titles(titles, len(texts))
    if prompt is not None:
        if title_list is not None:
            raise PromptError("titles fill the document prompt's title slot; they cannot be used with a literal "
                              "prompt", "titles")
        return [prompt + t for t in texts]
    name = prompt_name if prompt_name is not None else ("document" if title_list is not None else default_prompt_name)
    if name is None:
        return list(texts)
    if name not in prompts:
        raise PromptError(f"unknown prompt name {name!r}; this model has: {', '.join(sorted(prompts))}", "prompt_name")
    template = prompts[name]
    if title_list is None:
        return [template + t for t in texts]
    if TITLE_SLOT not in template:
        raise PromptError(f"prompt {name!r} ({template!r}) has no {TITLE_SLOT!r} slot; titles go with the "
                          "'document' prompt", "titles")
    return [(template.replace(TITLE_SLOT, f"title: {title}", 1) if title else template) + t
            for title, t in zip(title_list, texts)]


def _check_titles(titles, count: int) -> list[str | None] | None:
    if titles is None:
        return None
    title_list = [titles] if isinstance(titles, str) else list(titles)
    if len(title_list) != count:
        raise PromptError(f"got {len(title_list)} titles for {count} texts; give one title (or None) per text",
                          "titles")
    for i, title in enumerate(title_list):
        if title is not None and not isinstance(title, str):
            raise TypeError(f"titles[{i}] is {type(title).__name__}, expected str or None")
    return title_list
