"""Quantization recipes: which block format each weight group of EmbeddingGemma gets.

Grammar: ``e{F}_a{F}_f{F}_p{F}`` where each ``F`` is a format's recipe code from ``quant.formats``
(8 = Q8_0, 4 = Q4_0, 5 = Q5_0), for

* ``e`` embeddings: the token-embedding table,
* ``a`` attention: q/k/v/o projections of every layer,
* ``f`` feed-forward: gate/up/down projections of every layer,
* ``p`` projection heads: the two Dense layers 768->3072->768.

A trailing ``i`` on attention or feed-forward puts that group on the integer path
(``quant.int8_path``): int8 weights per output channel and int8 activations quantized per token at
run time, for onnxruntime's integer GEMM (v_proj and down_proj compute in fp32). ``a8i`` / ``f8i``
store those int8 codes; ``a4i`` / ``f4i`` store the group as Q4_0 blocks and re-code it to int8 per output channel (v_proj, down_proj: to float32) with constant ops
when the session loads: the integer path's speed from a 4-bit download. A trailing ``s`` instead
(``a8s`` / ``f8s``) is the integer path's static form: every projection (v_proj and down_proj too) on
the integer GEMM, its input coded with one calibrated scale instead of one per token. Faster, less
faithful (``quant.int8_path.STATIC_ELIGIBLE``).

Per-layer overrides follow a colon, comma-separated: ``SEL{F}[@LAYERS]`` where ``SEL`` is a
decoder-layer group (``a``, ``f``) or one projection (``q k v o`` of attention, ``gate up down`` of
the feed-forward), and ``LAYERS`` is ``N``, ``N-M`` or ``*`` (every layer, the default). Later
overrides win. ``q4_0:f8@20-23`` is q4_0 with the feed-forward of layers 20-23 in Q8_0;
``q4_0:down8,v8@0-3`` keeps every down_proj and the first four v_proj in Q8_0. Groups on the integer
path take no overrides.

Named recipes: each format's uniform recipe by its name (``q8_0`` = ``e8_a8_f8_p8``, ``q4_0`` =
``e4_a4_f4_p4``, ...), ``w8a8`` = ``e8_a8i_f8i_p8`` (the speed-first variant) and ``w8a8_s4`` =
``e4_a4i_f4i_p8:v8,down8`` (its 4-bit download; v_proj and down_proj, which compute in float32, in
Q8_0), ``w8a8_fast`` = ``e8_a8s_f8s_p8`` (the static form: speed before fidelity). ``e4_a8_f4_p4``
is Google's mixed recipe. Norms and every other tensor stay float32 in every recipe.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from .formats import FORMATS, BlockFormat, get_format

#: Weight groups in recipe order, with their one-letter recipe keys.
GROUPS = ("embeddings", "attention", "feed_forward", "projection")
GROUP_KEYS = {"e": "embeddings", "a": "attention", "f": "feed_forward", "p": "projection"}
#: Groups that may take the integer path (the ``i`` suffix), and what the manifest calls it.
INTEGER_GROUPS = ("attention", "feed_forward")
INTEGER_FORMAT = "int8 per output channel, activations int8 per token at run time"
STATIC_FORMAT = "int8 per output channel, activations int8 with one calibrated scale per input (static)"

#: Each format's uniform recipe under its own name, and the speed-first variant.
NAMED = {**{f.name.lower(): "_".join(f"{k}{f.recipe_code}" for k in GROUP_KEYS) for f in FORMATS.values()},
         "w8a8": "e8_a8i_f8i_p8", "w8a8_s4": "e4_a4i_f4i_p8:v8,down8", "w8a8_fast": "e8_a8s_f8s_p8"}
#: What ``--variant all`` builds, in this order.
STANDARD_VARIANTS = ("q8_0", "q4_0", "e4_a8_f4_p4", "w8a8")

_BY_CODE = {f.recipe_code: f for f in FORMATS.values()}
_CODES = "|".join(re.escape(c) for c in sorted(_BY_CODE, key=len, reverse=True))
_CODE_LIST = ", ".join(f"{f.recipe_code} ({f.name})" for f in FORMATS.values())
_GRAMMAR = "e{F}_a{F}[i|s]_f{F}[i|s]_p{F}"
_STRICT = re.compile(rf"^e({_CODES})_a({_CODES})([is]?)_f({_CODES})([is]?)_p({_CODES})$")
_LOOSE = re.compile(r"^e([^_]+?)_a([^_]+?)([is]?)_f([^_]+?)([is]?)_p([^_is]+)$")


#: Override selectors: a decoder-layer group, or one projection of it (``quant.graph.site_position`` names).
SELECTORS = {"a": ("attention", None), "f": ("feed_forward", None),
             **{p: ("attention", p) for p in ("q", "k", "v", "o")},
             **{p: ("feed_forward", p) for p in ("gate", "up", "down")}}
_OVERRIDE = re.compile(rf"^({'|'.join(sorted(SELECTORS, key=len, reverse=True))})({_CODES})(?:@(\*|\d+(?:-\d+)?))?$")
#: Projections an integer-path group computes in float32 (``quant.int8_path.KEPT_FP32``): with a block
#: storage (``a4i``) they are stored in its format and may take overrides.
FLOAT_PROJECTIONS = ("v", "down")
_OVERRIDE_GRAMMAR = "SEL{F}[@N|@N-M|@*] with SEL one of a, f, q, k, v, o, gate, up, down"


class RecipeError(ValueError):
    """A variant name or recipe string is malformed or asks for something unsupported."""


@dataclass(frozen=True)
class Override:
    """One per-layer exception to a recipe: ``selector``'s weights in ``layers`` (inclusive; None = all) use ``fmt``."""

    selector: str
    fmt: str
    layers: tuple[int, int] | None = None

    @property
    def group(self) -> str:
        """The weight group the selector belongs to."""
        return SELECTORS[self.selector][0]

    @property
    def text(self) -> str:
        """The override in the recipe grammar, e.g. ``f8@20-23``."""
        code = get_format(self.fmt).recipe_code
        if self.layers is None:
            return f"{self.selector}{code}"
        lo, hi = self.layers
        return f"{self.selector}{code}@{lo}" if lo == hi else f"{self.selector}{code}@{lo}-{hi}"

    def matches(self, group: str, position: tuple[int, str] | None) -> bool:
        """Whether a weight of ``group`` at ``position`` (layer, projection) is one this override selects."""
        if position is None or group != self.group:
            return False
        layer, proj = position
        wanted = SELECTORS[self.selector][1]
        in_range = self.layers is None or self.layers[0] <= layer <= self.layers[1]
        return in_range and (wanted is None or wanted == proj)


def parse_override(text: str) -> Override:
    """``f8@20-23`` -> ``Override("f", "Q8_0", (20, 23))``; raises ``RecipeError`` on anything else."""
    m = _OVERRIDE.match(text.strip().lower())
    if not m:
        raise RecipeError(f"bad override {text!r}; expected {_OVERRIDE_GRAMMAR}, F one of {_CODE_LIST} "
                          "(e.g. f8@20-23, down8, v8@0-3)")
    selector, code, layers = m.groups()
    span = None
    if layers not in (None, "*"):
        lo, _, hi = layers.partition("-")
        span = (int(lo), int(hi or lo))
        if span[0] > span[1]:
            raise RecipeError(f"bad override {text!r}: layer range {layers} runs backwards; write {span[1]}-{span[0]}")
    return Override(selector, _BY_CODE[code].name, span)


def allowed_text() -> str:
    """One line naming every accepted variant spelling, for error messages and --help."""
    extra = [n for n in NAMED if n not in STANDARD_VARIANTS and n.upper() not in FORMATS]
    return (f"one of {', '.join([*STANDARD_VARIANTS, *extra])}, a format name ({', '.join(f.lower() for f in FORMATS)}), "
            f"or a recipe {_GRAMMAR} (e=embeddings, a=attention, f=feed-forward, p=projection heads; F is "
            f"{_CODE_LIST}; an i after a or f = the int8 integer path, stored as int8 (8i) or in that format and "
            "re-coded when the session loads (4i); an s instead = its static form, every projection int8 (8s))")


@dataclass(frozen=True)
class Recipe:
    """The block format (by name, e.g. "Q4_0") of each weight group, and the integer-path groups."""

    embeddings: str
    attention: str
    feed_forward: str
    projection: str
    integer: tuple[str, ...] = ()
    overrides: tuple[Override, ...] = ()
    static: tuple[str, ...] = ()          # integer-path groups in the static form (``a8s`` / ``f8s``)

    def __post_init__(self):
        for group in GROUPS:
            try:
                get_format(getattr(self, group))
            except ValueError as exc:
                raise RecipeError(f"{group}: {exc}") from None
        for group in self.integer:
            if group not in INTEGER_GROUPS:
                raise RecipeError(f"the integer path ('i') applies to attention and feed-forward only, not {group}")
            if self.format_of(group).bits not in (4, 8):
                raise RecipeError(f"the integer path ('i') is stored as int8 codes (8i) or Q4_0 blocks (4i); "
                                  f"{group.replace('_', '-')} is {self.format_of(group).name}")
        for group in self.static:
            if group not in self.integer or self.format_of(group).bits != 8:
                raise RecipeError(f"the integer path's static form ('s') stores int8 codes: write 8s, not "
                                  f"{group.replace('_', '-')} in {self.format_of(group).name}")
        for o in self.overrides:
            if o.group in self.static:
                raise RecipeError(f"override {o.text!r}: {o.group.replace('_', '-')} is in the static form ('s'), "
                                  "which takes no per-layer formats")
            if o.group in self.integer and not (self.integer_storage(o.group) and o.selector in FLOAT_PROJECTIONS):
                raise RecipeError(f"override {o.text!r}: {o.group.replace('_', '-')} is on the integer path, which "
                                  "takes per-layer formats only for v / down of a block-stored group (a4i:v8, f4i:down8)")

    @property
    def base(self) -> str:
        """The per-group recipe string without overrides, e.g. ``e4_a8_f4_p4``."""
        return "_".join(f"{key}{self.format_of(group).recipe_code}{self._suffix(group)}"
                        for key, group in GROUP_KEYS.items())

    def _suffix(self, group: str) -> str:
        return "s" if group in self.static else "i" if group in self.integer else ""

    @property
    def recipe(self) -> str:
        """The canonical recipe string, e.g. ``e4_a8_f4_p4`` or ``e4_a4_f4_p4:f8@20-23``."""
        return self.base + (":" + ",".join(o.text for o in self.overrides) if self.overrides else "")

    @property
    def base_name(self) -> str:
        """The named recipe the groups equal without overrides (``q4_0`` for ``q4_0:f8@20-23``), else ``base``."""
        return next((named for named, recipe in NAMED.items() if recipe == self.base), self.base)

    @property
    def name(self) -> str:
        """The variant name: the named recipe it equals (``q8_0``, ``w8a8``, ...), else the recipe string;
        overrides follow the name (``q4_0:f8@20-23``)."""
        whole = next((named for named, recipe in NAMED.items() if recipe == self.recipe), None)
        if whole is not None:
            return whole
        return self.base_name + (":" + ",".join(o.text for o in self.overrides) if self.overrides else "")

    def format_for(self, group: str, position: tuple[int, str] | None = None) -> BlockFormat:
        """The block format of one weight: its group's, unless an override selects its (layer, projection)."""
        fmt = self.format_of(group)
        for o in self.overrides:
            if o.matches(group, position):
                fmt = get_format(o.fmt)
        return fmt

    def group_formats(self, group: str) -> set[str]:
        """Every format a group's weights may have in this recipe (its own and its overrides')."""
        return {self.format_of(group).name} | {o.fmt for o in self.overrides if o.group == group}

    def format_of(self, group: str) -> BlockFormat:
        """The block format of one weight group (``embeddings``, ``attention``, ``feed_forward``, ``projection``)."""
        if group not in GROUPS:
            raise KeyError(f"unknown weight group {group!r}; groups are {', '.join(GROUPS)}")
        return get_format(getattr(self, group))

    def format(self, group: str) -> str:
        """What the manifest calls one group's storage: its format name, or the integer path's description."""
        if group not in self.integer:
            return self.format_of(group).name
        if group in self.static:
            return STATIC_FORMAT
        stored = self.integer_storage(group)
        return INTEGER_FORMAT + (f", stored as {stored.name} and re-coded when the session loads" if stored else "")

    def uses_integer_path(self, group: str) -> bool:
        """Whether the group's eligible weights take the integer path (``a8i`` / ``f8i``, ``a4i`` / ``f4i``)."""
        return group in self.integer

    def uses_static_form(self, group: str) -> bool:
        """Whether the group is on the integer path's static form (``a8s`` / ``f8s``): every projection
        int8, one calibrated activation scale per input."""
        return group in self.static

    def integer_storage(self, group: str) -> BlockFormat | None:
        """The block format an integer-path group is stored in (``a4i``: Q4_0), or None when it stores
        its int8 codes as they run (``a8i``)."""
        fmt = self.format_of(group)
        return fmt if group in self.integer and fmt.bits != 8 else None


def parse_recipe(text: str) -> Recipe:
    """Parse a variant name (``q8_0``, ``w8a8``) or recipe string (``e4_a8_f4_p4``) into a ``Recipe``.

    Raises ``RecipeError`` naming what is allowed for typos, unknown format codes or an integer path
    on a group that cannot take it.
    """
    if not isinstance(text, str):
        raise RecipeError(f"variant must be a string, got {type(text).__name__}")
    head, colon, tail = text.partition(":")
    if colon:
        base = parse_recipe(head)
        items = [t for t in tail.split(",") if t.strip()]
        if not items:
            raise RecipeError(f"recipe {text!r} has a colon but no overrides; expected e.g. {head}:f8@20-23")
        try:
            return Recipe(base.embeddings, base.attention, base.feed_forward, base.projection, base.integer,
                          overrides=tuple(parse_override(t) for t in items), static=base.static)
        except RecipeError as exc:
            raise RecipeError(f"recipe {text!r}: {exc}") from None
    key = text.strip().lower()
    recipe = NAMED.get(key, key)
    if ":" in recipe:   # a named recipe with overrides
        return parse_recipe(recipe)
    match = _STRICT.match(recipe)
    if not match:
        loose = _LOOSE.match(recipe)
        if loose:
            e, a, _, f, _, p = loose.groups()
            bad = [f"{k}{v} ({GROUP_KEYS[k].replace('_', '-')})" for k, v in zip(GROUP_KEYS, (e, a, f, p))
                   if v not in _BY_CODE]
            raise RecipeError(f"unsupported format in recipe {text!r}: {', '.join(bad)}; each group takes "
                              f"{_CODE_LIST}, i.e. {_GRAMMAR}")
        close = difflib.get_close_matches(key, [*STANDARD_VARIANTS, *NAMED, *NAMED.values()], n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(f"unknown variant {text!r}{hint}; expected {allowed_text()}")
    e, a, a_int, f, f_int, p = match.groups()
    formats = [_BY_CODE[c] for c in (e, a, f, p)]
    flags = (("attention", a_int), ("feed_forward", f_int))
    integer = tuple(g for g, flag in flags if flag)
    return Recipe(*(fmt.name for fmt in formats), integer=integer, static=tuple(g for g, flag in flags if flag == "s"))


def held_to(table: dict, name: str | None):
    """``table``'s entry (a target) for the variant ``name``, or for its base format when ``name`` is a
    recipe with per-site overrides (``q4_0:v8@0-23,...``, what ``--budget`` writes): such a build is
    held to what its base format is held to. None when neither is in ``table``."""
    if not name:
        return None
    if name in table:
        return table[name]
    try:
        return table.get(parse_recipe(name).base_name)
    except RecipeError:
        return None


def parse_variants(text: str) -> list[Recipe]:
    """``all`` -> the standard variants; anything else -> ``[parse_recipe(text)]``."""
    if isinstance(text, str) and text.strip().lower() == "all":
        return [parse_recipe(v) for v in STANDARD_VARIANTS]
    return [parse_recipe(text)]
