"""Quantization recipes: which ggml block format each weight group of EmbeddingGemma gets.

Grammar: ``e{bits}_a{bits}_f{bits}_p{bits}`` with each ``bits`` 4 (Q4_0) or 8 (Q8_0):

* ``e`` embeddings: the token-embedding table (``GatherBlockQuantized``),
* ``a`` attention: q/k/v/o projections of every layer (``MatMulNBits``),
* ``f`` feed-forward: gate/up/down projections of every layer (``MatMulNBits``),
* ``p`` projection heads: the two Dense layers 768->3072->768 (``MatMulNBits``).

A trailing ``i`` on the attention or feed-forward bits (``a8i``, ``f8i``; 8 bits only) puts that
group on the integer path (``quant.int8_path``): int8 weights per output channel and int8
activations quantized per token at run time, for onnxruntime's integer GEMM (v_proj and
down_proj stay fp32; see ``quant.int8_path``).

Named recipes: ``q8_0`` = ``e8_a8_f8_p8``, ``q4_0`` = ``e4_a4_f4_p4``, ``w8a8`` = ``e8_a8i_f8i_p8``
(the speed-first variant). ``e4_a8_f4_p4`` is Google's mixed recipe. Norms and every other tensor
stay float32 in every recipe. Standard library only.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

#: Weight groups in recipe order, with their one-letter recipe keys.
GROUPS = ("embeddings", "attention", "feed_forward", "projection")
GROUP_KEYS = {"e": "embeddings", "a": "attention", "f": "feed_forward", "p": "projection"}
ALLOWED_BITS = (4, 8)
FORMAT_OF_BITS = {8: "Q8_0", 4: "Q4_0"}
#: Groups that may take the integer path (the ``i`` suffix).
INTEGER_GROUPS = ("attention", "feed_forward")
INTEGER_FORMAT = "int8 per output channel, activations int8 per token at run time"
#: ggml Q8_0/Q4_0 define blocks of 32; onnxruntime could take other sizes but the formats cannot.
ALLOWED_BLOCK_SIZES = (32,)
DEFAULT_BLOCK_SIZE = 32

NAMED = {"q8_0": "e8_a8_f8_p8", "q4_0": "e4_a4_f4_p4", "w8a8": "e8_a8i_f8i_p8"}
#: What ``--variant all`` builds, in this order.
STANDARD_VARIANTS = ("q8_0", "q4_0", "e4_a8_f4_p4", "w8a8")

_GRAMMAR = "e{4|8}_a{4|8}[i]_f{4|8}[i]_p{4|8}"
_LOOSE = re.compile(r"^e(\d+)_a(\d+)(i?)_f(\d+)(i?)_p(\d+)$")


class RecipeError(ValueError):
    """A variant name or recipe string is malformed or asks for something unsupported."""


def allowed_text() -> str:
    """One line naming every accepted variant spelling, for error messages and --help."""
    return (f"one of {', '.join(STANDARD_VARIANTS)}, or a recipe {_GRAMMAR} "
            "(e=embeddings, a=attention, f=feed-forward, p=projection heads; 4 = Q4_0, 8 = Q8_0; "
            "8i = the int8 integer path, attention and feed-forward only)")


@dataclass(frozen=True)
class Recipe:
    """Bits per weight group (4 -> Q4_0, 8 -> Q8_0) and the block size (32, as ggml defines)."""

    embeddings: int
    attention: int
    feed_forward: int
    projection: int
    block_size: int = DEFAULT_BLOCK_SIZE
    integer: tuple[str, ...] = ()

    def __post_init__(self):
        for group in GROUPS:
            bits = getattr(self, group)
            if bits not in ALLOWED_BITS:
                raise RecipeError(f"{group} bits must be 4 or 8, got {bits!r}")
        for group in self.integer:
            if group not in INTEGER_GROUPS:
                raise RecipeError(f"the integer path ('i') applies to attention and feed-forward only, not {group}")
            if getattr(self, group) != 8:
                raise RecipeError(f"the integer path ('i') needs 8 bits; {group} has {getattr(self, group)}")
        if self.block_size not in ALLOWED_BLOCK_SIZES:
            raise RecipeError(f"block size {self.block_size!r} is not supported: ggml Q8_0/Q4_0 blocks are "
                              f"{'/'.join(map(str, ALLOWED_BLOCK_SIZES))} weights long")

    @property
    def recipe(self) -> str:
        """The canonical recipe string, e.g. ``e4_a8_f4_p4``."""
        tag = {g: "i" if g in self.integer else "" for g in INTEGER_GROUPS}
        return (f"e{self.embeddings}_a{self.attention}{tag['attention']}_f{self.feed_forward}{tag['feed_forward']}"
                f"_p{self.projection}")

    @property
    def name(self) -> str:
        """The variant name: ``q8_0``/``q4_0`` for the uniform recipes, else the recipe string."""
        for named, recipe in NAMED.items():
            if recipe == self.recipe:
                return named
        return self.recipe

    def bits(self, group: str) -> int:
        """Bits of one weight group (``embeddings``, ``attention``, ``feed_forward``, ``projection``)."""
        if group not in GROUPS:
            raise KeyError(f"unknown weight group {group!r}; groups are {', '.join(GROUPS)}")
        return getattr(self, group)

    def format(self, group: str) -> str:
        """ggml format name (``Q8_0`` or ``Q4_0``) of one weight group, or the integer path's description."""
        if group in self.integer:
            return INTEGER_FORMAT
        return FORMAT_OF_BITS[self.bits(group)]

    def uses_integer_path(self, group: str) -> bool:
        """Whether the group's eligible weights take the integer path (``a8i`` / ``f8i``)."""
        return group in self.integer


def parse_recipe(text: str, block_size: int = DEFAULT_BLOCK_SIZE) -> Recipe:
    """Parse a variant name (``q8_0``, ``q4_0``) or recipe string (``e4_a8_f4_p4``) into a ``Recipe``.

    Raises ``RecipeError`` naming what is allowed for typos, bits other than 4/8, or a block size
    other than 32.
    """
    if not isinstance(text, str):
        raise RecipeError(f"variant must be a string, got {type(text).__name__}")
    key = text.strip().lower()
    recipe = NAMED.get(key, key)
    match = _LOOSE.match(recipe)
    if not match:
        close = difflib.get_close_matches(key, [*STANDARD_VARIANTS, *NAMED.values()], n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(f"unknown variant {text!r}{hint}; expected {allowed_text()}")
    e, a, a_int, f, f_int, p = match.groups()
    values = [int(v) for v in (e, a, f, p)]
    bad = [f"{k}{v} ({GROUP_KEYS[k].replace('_', '-')})" for k, v in zip(GROUP_KEYS, values) if v not in ALLOWED_BITS]
    if bad:
        raise RecipeError(f"unsupported bits in recipe {text!r}: {', '.join(bad)}; each group takes 4 (Q4_0) or "
                          f"8 (Q8_0), i.e. {_GRAMMAR}")
    integer = tuple(g for g, flag in (("attention", a_int), ("feed_forward", f_int)) if flag)
    bad_int = [g.replace("_", "-") for g in integer if values[GROUPS.index(g)] != 8]
    if bad_int:
        raise RecipeError(f"recipe {text!r}: the integer path ('i') needs 8 bits ({', '.join(bad_int)}: 4 bits); "
                          f"write a8i / f8i")
    return Recipe(*values, block_size=block_size, integer=integer)


def parse_variants(text: str, block_size: int = DEFAULT_BLOCK_SIZE) -> list[Recipe]:
    """``all`` -> the three standard variants; anything else -> ``[parse_recipe(text)]``."""
    if isinstance(text, str) and text.strip().lower() == "all":
        return [parse_recipe(v, block_size) for v in STANDARD_VARIANTS]
    return [parse_recipe(text, block_size)]
