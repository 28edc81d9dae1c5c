"""A size budget: each decoder-layer weight's format chosen for the most fidelity per byte.

``plan_budget`` starts from a base recipe (every weight in its group's format, e.g. q4_0) and moves
single weights to Q8_0 in order of estimated fidelity gained per added byte, while the model files
(``model.onnx`` and its weights file) still fit the budget. Sizes are exact: each candidate plan's
graph is written once with zero codes (same tensors, names and nodes as the real build, so the same
bytes) and measured. The result is an ordinary recipe with per-layer overrides (``quant.recipe``),
so the plan is recorded in the manifest and can be rebuilt by name without a budget.

What a weight's 4 bits cost is measured, not estimated (``quant.sensitivity``): the pooled
embedding's ``1 - cos`` to fp32 on calibration texts with only that weight in Q4_0. A Hessian-weighted
estimate (the calibrated relative output error) ranked the real model's 168 weights with a rank
correlation of only 0.26 to that measurement (docs/notes/budget.md), so it does not choose here.
"""
from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import graph as G
from .formats import BLOCK_SIZE, BlockFormat, get_format
from .quantizer import site_format
from .recipe import Override, Recipe
from .source import Fp32Source, QuantInputError

log = logging.getLogger("quant")

#: The format a weight is upgraded to.
UPGRADE = "Q8_0"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}
#: Projections in the order the override grammar writes them.
_PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


def parse_size(text: str) -> int:
    """``200MB`` -> 200,000,000 bytes (MB = 10^6, MiB = 2^20; a bare number is bytes)."""
    m = _SIZE.match(str(text))
    if not m:
        raise QuantInputError(f"--budget {text!r} is not a size; write e.g. 200MB, 190MiB or 200000000")
    return int(float(m[1]) * _UNITS[(m[2] or "b").lower()])


@dataclass(frozen=True)
class BudgetPlan:
    """What the planner chose: the recipe with overrides, its exact model bytes and the budget."""

    recipe: Recipe
    model_bytes: int
    budget: int
    base_bytes: int
    upgrades: int

    def describe(self) -> dict:
        """The manifest's ``budget`` entry."""
        return {"bytes": self.budget, "model_bytes": self.model_bytes, "base": self.recipe.base,
                "base_model_bytes": self.base_bytes, "upgraded_weights": self.upgrades, "to": UPGRADE,
                "order": "measured 1 - cos of the embedding with one weight in Q4_0, per added byte "
                         "(quant/sensitivity.py)"}


def candidates(src: Fp32Source, base: Recipe) -> list[G.WeightSite]:
    """The decoder-layer weights ``base`` stores in Q4_0: what the budget may move to Q8_0."""
    return [s for s in src.sites if G.site_position(s.name) and site_format(base, s).name == "Q4_0"]


def plan_budget(src: Fp32Source, base: Recipe, budget: int, write_graph, cost: dict[str, float]) -> BudgetPlan:
    """The recipe that moves the most measured cost to Q8_0 while its model files fit ``budget`` bytes.

    ``write_graph(recipe, model_path)`` writes a recipe's graph with zero codes (``quant.build``);
    ``cost`` maps each candidate weight to what Q4_0 there costs (``quant.sensitivity.measure``).
    Raises ``QuantInputError`` when even the base recipe does not fit.
    """
    if base.integer or base.overrides:
        raise QuantInputError("--budget starts from a block-format recipe without the integer path or overrides "
                              f"(e.g. q4_0, e4_a8_f4_p4), got {base.name}")
    base_bytes = _model_bytes(write_graph, base)
    if base_bytes > budget:
        raise QuantInputError(f"--budget {budget:,} bytes is below {base.name}'s own size ({base_bytes:,} bytes of "
                              "model files); give a larger budget or a smaller base --variant")
    upgrade = get_format(UPGRADE)
    sites = candidates(src, base)
    missing = [s.name for s in sites if s.name not in cost]
    if missing:
        raise QuantInputError(f"the sensitivity measurement has no entry for {len(missing)} weights (e.g. "
                              f"{missing[0]}); measure this fp32 artifact again with python -m quant.sensitivity")
    # measured cost recovered per added byte, best first
    order = sorted(sites, key=lambda s: -cost[s.name] / _added_bytes(s, site_format(base, s), upgrade))
    chosen, room = [], budget - base_bytes
    for s in order:
        cost = _added_bytes(s, site_format(base, s), upgrade)
        if cost <= room:
            chosen.append(s)
            room -= cost
    recipe = with_upgrades(base, chosen)
    size = _model_bytes(write_graph, recipe)
    while size > budget and chosen:   # graph bytes beside the payload (offsets, names): drop the least useful
        chosen.pop()
        recipe = with_upgrades(base, chosen)
        size = _model_bytes(write_graph, recipe)
    log.info("budget %s bytes: %s, %s bytes of model files (%d weights in %s; %s alone: %s bytes)",
             f"{budget:,}", recipe.name, f"{size:,}", len(chosen), UPGRADE, base.name, f"{base_bytes:,}")
    return BudgetPlan(recipe, size, budget, base_bytes, len(chosen))


def with_upgrades(base: Recipe, sites: list[G.WeightSite]) -> Recipe:
    """``base`` with the given decoder-layer weights in Q8_0, as compact overrides (``down8@20-23``)."""
    layers: dict[str, list[int]] = {}
    for s in sites:
        layer, proj = G.site_position(s.name)
        layers.setdefault(proj, []).append(layer)
    overrides = []
    for proj in _PROJECTIONS:
        for lo, hi in _runs(sorted(layers.get(proj, []))):
            overrides.append(Override(proj, UPGRADE, (lo, hi)))
    recipe = Recipe(base.embeddings, base.attention, base.feed_forward, base.projection, overrides=tuple(overrides))
    assert {s.name for s in sites} == {s.name for s in sites if site_format(recipe, s).name == UPGRADE}
    return recipe


def _runs(values: list[int]) -> list[tuple[int, int]]:
    """[1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    runs: list[tuple[int, int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    return runs


def _added_bytes(site: G.WeightSite, old: BlockFormat, new: BlockFormat) -> int:
    """Payload bytes one weight gains in ``new`` (MatMulNBits stores float32 block scales)."""
    blocks = site.n * (site.k // BLOCK_SIZE)
    return blocks * ((new.block_bytes + 4) - (old.block_bytes + 4))


def _model_bytes(write_graph, recipe: Recipe) -> int:
    """Exact model-file bytes of a recipe: its graph written with zero codes into a scratch folder."""
    with tempfile.TemporaryDirectory(prefix="budget-") as tmp:
        write_graph(recipe, Path(tmp) / "model.onnx")
        return sum(f.stat().st_size for f in Path(tmp).iterdir())


class ZeroQuantizer:
    """Stands in for ``SiteQuantizer`` when only sizes matter: every weight's codes and scales are zeros."""

    two_pass = False   # budgets plan block formats; the integer path's form does not arise

    def get(self, site: G.WeightSite, fmt: BlockFormat) -> tuple[G.QuantizedWeight, str]:
        """Zero codes of ``site`` in ``fmt``, shaped as the real ones."""
        nb = site.k // BLOCK_SIZE
        return G.QuantizedWeight(fmt, np.zeros((site.n, nb, fmt.block_bytes), np.uint8),
                                 np.zeros((site.n, nb), np.float16)), "zeros"

    def norm_edits(self, recipe: Recipe) -> dict:
        """Norm edits change values, never sizes."""
        return {}

