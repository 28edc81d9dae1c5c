"""Quantized values for every weight site of the recipes built in one run.

Round-to-nearest is cheap and computed when asked. The calibrated method is not, so its results are
shared: GPTQ runs once per layer input on the rows of all weights that read it (q/k/v, gate/up: same
Hessian, and GPTQ treats rows independently, so this equals running them one by one), and a result
another recipe of the run will reuse (the 4-bit table of q4_0 and e4_a8_f4_p4) is kept until its
last use.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from runtime.onnx_helpers import read_initializer
from runtime.progress import progress_bar

from . import graph as G
from . import int8_path as I8
from .calibration import ActivationStats
from .formats import BLOCK_SIZE, BlockFormat, get_format
from .gptq import (DAMP, HEAD_DAMP, chained_head_weights, gptq_factor, gptq_quantize, gptq_quantize_per_channel,
                   gptq_quantize_together,
                   scale_search_quantize)
from .packing import pack_blocks
from .recipe import Recipe
from .source import Fp32Source, QuantInputError

log = logging.getLogger("quant")

METHODS = ("rtn", "gptq", "learned", "corrected")
#: Methods that compute every decoder layer's codes at once, in torch: GPTQ's (activation-aware
#: scales, the heads, the table) with the layers' codes learned by block reconstruction
#: (``quant.learned``) or quantized by GPTQ from corrected weights (``quant.corrected``).
LAYER_METHODS = ("learned", "corrected")
#: Methods that calibrate.
CALIBRATED = ("gptq",) + LAYER_METHODS
#: GPTQ needs at least this many calibration rows per input dimension (a full-rank Hessian);
#: otherwise the calibrated method only weights the scale search by the Hessian diagonal.
GPTQ_MIN_ROWS_PER_INPUT = 1.0
#: Groups whose weights get activation-aware scales before GPTQ (``quant.awq``), in the formats
#: that ask for them.
AWQ_GROUPS = ("attention", "feed_forward")
#: Key of integer-path requests in the quantizer's bookkeeping (beside format names).
INTEGER_KEY = "int8_path"
# Rows of the token table quantized per step: 16384 x 768 float32 is 48 MB of temporaries.
_TABLE_ROWS_PER_CHUNK = 16384


def site_format(recipe: Recipe, site: G.WeightSite) -> BlockFormat:
    """The block format ``recipe`` gives ``site`` (its group's, or a per-layer override's)."""
    return recipe.format_for(site.group, G.site_position(site.name))


def awq_applies(recipe: Recipe, group: str) -> bool:
    """Whether ``recipe`` stores any of ``group``'s weights in a block format that gets activation-aware scales."""
    return (group in AWQ_GROUPS and not recipe.uses_integer_path(group)
            and any(get_format(f).activation_aware for f in recipe.group_formats(group)))


def mixed_groups(recipes: list[Recipe]) -> set[str]:
    """Groups whose activation-aware scales also reach weights of other formats (per-layer overrides): the
    fold divides a layer input shared by all its readers, so every reader is quantized from scaled weights."""
    return {g for r in recipes for g in AWQ_GROUPS if awq_applies(r, g) and len(r.group_formats(g)) > 1}


def two_pass_site(recipe: Recipe, site: G.WeightSite, two_pass: bool) -> bool:
    """Whether ``site`` is an integer-path down_proj (``I8.TWO_PASS``) computed in two integer passes:
    with ``two_pass`` (a target with an int8 matrix unit) and int8 storage (``a4i`` keeps it float32)."""
    return (two_pass and site.op == "MatMul" and recipe.uses_integer_path(site.group) and I8.is_two_pass(site.name)
            and recipe.integer_storage(site.group) is None and not recipe.uses_static_form(site.group))


def on_integer_path(recipe: Recipe, site: G.WeightSite, two_pass: bool = False) -> bool:
    """Whether ``site`` takes the integer path in ``recipe`` (``two_pass``: see ``two_pass_site``; the
    static form takes every projection, ``I8.STATIC_ELIGIBLE``)."""
    if site.op == "MatMul" and recipe.uses_static_form(site.group):
        return I8.is_static_eligible(site.name)
    return (site.op == "MatMul" and recipe.uses_integer_path(site.group) and I8.is_eligible(site.name)
            or two_pass_site(recipe, site, two_pass))


def kept_fp32(recipe: Recipe, site: G.WeightSite, two_pass: bool = False) -> bool:
    """Whether ``site`` is stored float32 in ``recipe`` (the integer path's v_proj and down_proj when the
    group stores int8 codes and they are not computed in two passes, ``two_pass_site``; with a block
    storage, ``a4i``, they are stored in it and decoded at load)."""
    return (site.op == "MatMul" and recipe.uses_integer_path(site.group) and I8.keeps_fp32(site.name)
            and recipe.integer_storage(site.group) is None and not two_pass_site(recipe, site, two_pass)
            and not recipe.uses_static_form(site.group))


def integer_key(storage: BlockFormat | None) -> str:
    """The quantizer's bookkeeping key of integer-path weights: int8 codes, or codes from a block ``storage``."""
    return INTEGER_KEY if storage is None else f"{INTEGER_KEY}:{storage.name}"


class SiteQuantizer:
    """Quantizes weight sites on demand for the recipes built in one run (see the module docstring).

    ``stats`` are the calibration statistics (None for round-to-nearest without the integer path).
    """

    def __init__(self, src: Fp32Source, method: str, stats: ActivationStats | None, recipes: list[Recipe],
                 progress: bool = False, texts: list[str] | None = None, threads: int | None = None,
                 two_pass: bool = False):
        self.src, self.method, self.two_pass = src, method, two_pass
        self.hessians = stats.hessians if stats and method in CALIBRATED else {}   # popped as they are used up
        self.rows = stats.rows if stats and method in CALIBRATED else {}
        self.absmax = stats.absmax if stats else {}
        model = src.graph()
        self._inits = {init.name: init for init in model.graph.initializer if init.name in {s.name for s in src.sites}}
        self._pending: dict[tuple[str, str], int] = {}
        for recipe in recipes:
            for site in src.sites:
                if kept_fp32(recipe, site, two_pass):
                    continue
                key = (site.name, integer_key(recipe.integer_storage(site.group)) if on_integer_path(recipe, site, two_pass)
                       else site_format(recipe, site).name)
                self._pending[key] = self._pending.get(key, 0) + 1
        self._cache: dict[tuple[str, str], tuple[G.QuantizedWeight, str]] = {}
        self._factors: dict[tuple[str, bool], object] = {}
        # Chained heads (x @ W1 @ W2): the later head is quantized to undo the earlier one's error
        # (``gptq.chained_head_weights``), from the earlier head's decoded values and input Hessian.
        self._chain_prev: dict[str, G.WeightSite] = {}
        if method in CALIBRATED:
            chain = G.head_chain(model, src.sites)
            self._chain_prev = {b.name: a for a, b in zip(chain, chain[1:])}
        self._chain_next = {a.name for a in self._chain_prev.values()}
        # (earlier head, format) -> (its decoded values [K, N], its input Hessian), until the next head uses them
        self._chain_done: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._mixed = mixed_groups(recipes)
        if self._mixed and len(recipes) > 1:
            raise QuantInputError("a recipe with per-layer overrides is built on its own (its activation-aware scales "
                                  "reach weights the other recipes keep unscaled); build it in a separate run")
        self.fold = self._plan_folding(model, recipes, progress)
        # a per-layer method (one recipe: ``quant.build`` refuses others before calibrating), run at first use
        self._layers = None
        self._layer_args = (recipes[0], texts, threads, progress)

    def _plan_folding(self, model, recipes: list[Recipe], progress: bool = False):
        """AWQ scales (``quant.awq``) for the attention / feed-forward groups whose format asks for them."""
        groups = {g for r in recipes for g in AWQ_GROUPS if awq_applies(r, g)}
        if self.method not in CALIBRATED or not groups or not self.hessians:
            return None
        from . import awq

        formats = {get_format(f) for r in recipes for g in groups if awq_applies(r, g) for f in r.group_formats(g)
                   if get_format(f).activation_aware}
        if len(formats) > 1:
            raise QuantInputError(f"activation-aware scales for {', '.join(sorted(f.name for f in formats))} in one "
                                  "run would fold two sets into the same norms; build these variants in separate runs")

        sites = [s for s in self.src.sites if s.group in groups]
        t0 = time.time()
        bar = progress_bar(len(awq.layer_sites(sites, groups)), "activation-aware scales", progress, unit="layer")
        fold = awq.plan(model, sites, self.hessians, self.rows, self._weight, groups, formats.pop(),
                        progress=bar.update)
        bar.close()
        log.info("activation-aware scales for %s searched in %.1f s", ", ".join(sorted(groups)), time.time() - t0)
        return fold

    def folded(self, site: G.WeightSite, fmt: BlockFormat) -> bool:
        """Whether ``site`` in ``fmt`` is quantized from AWQ-scaled weights."""
        return self.fold is not None and (fmt.activation_aware or site.group in self._mixed) and (
            site.name in self.fold.row_scales or site.name in self.fold.column_divisors)

    def norm_edits(self, recipe: Recipe) -> dict[str, np.ndarray]:
        """Norm initializers to divide by their AWQ scales in ``recipe``'s graph."""
        if self.fold is None:
            return {}
        return {name: s for name, s in self.fold.norm_divisors.items()
                if awq_applies(recipe, self.fold.norm_groups[name])}

    def _weight(self, site: G.WeightSite, fmt: BlockFormat | None = None) -> np.ndarray:
        w = read_initializer(self._inits[site.name], self.src.folder)
        if fmt is not None and self.folded(site, fmt):
            w = self.fold.weight(site.name, np.asarray(w, np.float32))
        return w

    def get(self, site: G.WeightSite, fmt: BlockFormat) -> tuple[G.QuantizedWeight, str]:
        """Packed codes for ``site`` in ``fmt`` and the method actually used for them."""
        key = (site.name, fmt.name)
        self._pending[key] -= 1
        if key in self._cache:
            return self._cache[key] if self._pending[key] else self._cache.pop(key)
        if self.method in LAYER_METHODS and site.op == "MatMul" and G.site_position(site.name) is not None:
            result = self._layer_site(site, fmt)
        elif site.op == "Gather":
            # No activations reach a lookup table: the calibrated method uses a plain-MSE scale
            # search, below 8 bits only (at 8 bits it costs a minute and changes almost nothing).
            search = self.method != "rtn" and fmt.bits < 8
            result = (quantize_table(self._weight(site), fmt, search), "scale_search" if search else "rtn")
        elif (self.method in CALIBRATED and site.activation in self.hessians
              and self.rows.get(site.activation, 0) < GPTQ_MIN_ROWS_PER_INPUT * site.k):
            # Too few rows for a full-rank Hessian (the Dense heads, when the graph's pooling is not
            # the shape ``graph.pooling_states`` knows and they get one pooled row per text): error
            # feedback would fit the calibration texts, so only weight the scale search by the
            # Hessian diagonal.
            wt = np.ascontiguousarray(np.asarray(self._weight(site), dtype=np.float32).T)
            q, d = scale_search_quantize(wt, fmt, np.diag(self.hessians[site.activation]))
            result = (_packed(fmt, q, d), "scale_search")
        elif (prev := self._chain_prev.get(site.name)) is not None and (prev.name, fmt.name) in self._chain_done:
            result = self._gptq_chained(site, prev, fmt)
        elif self.method in CALIBRATED and site.activation in self.hessians:
            return self._gptq_group(site, fmt)
        else:
            wt = np.ascontiguousarray(np.asarray(self._weight(site), dtype=np.float32).T)  # [N_out, K_in]
            result = (_packed(fmt, *fmt.quantize(wt)), "rtn")
        if self._pending[key] and self.method != "rtn":
            self._cache[key] = result
        return result

    def get_integer(self, activation: str, members: list[G.WeightSite], storage: BlockFormat | None = None,
                    twice: set[str] = frozenset()) -> tuple:
        """Integer-path weights of every site in ``members`` (all reading ``activation``): smoothing
        factors from the calibrated max |x| and the weights, then per-channel int8 codes of the
        smoothed weights (GPTQ on the smoothed Hessian with ``gptq``, round-to-nearest with ``rtn``).
        The ``I8.OUTLIER_CHANNELS`` largest input channels are split (``I8.split_columns``).
        With a block ``storage`` (``a4i``) the smoothed weights are quantized in that format instead
        (GPTQ or round-to-nearest, along the input) and each weight is an ``I8.StoredCodes``: its
        codes and scales plus the per-channel int8 scales of their decoded values, re-coded when the
        session loads.
        ``twice`` names the members computed in two passes (``two_pass_site``: down_proj on an AMX
        target), quantized as the others (the graph gives them a second pass, ``I8.add_integer_path``).
        Returns ``({weight name: (codes [K + copies, N] int8 or StoredCodes, scales [N])}, smoothing
        factors, method, split channel indices, the static form's input range ``I8.static_input_max``)``."""
        weights = {s.name: np.asarray(self._weight(s), dtype=np.float32) for s in members}
        if activation not in self.absmax:
            raise QuantInputError(f"no calibration statistics for {activation!r}; the integer path needs calibration")
        # an input that only two-pass members read is neither smoothed nor split: its residual pass is
        # near exact, and smoothing would only move difficulty into the weights
        once = len(twice) < len(members)
        if once:
            smooth = I8.smoothing_factors(self.absmax[activation], list(weights.values()))
            outliers = I8.outlier_channels(self.absmax[activation] / smooth)
        else:
            smooth, outliers = np.ones(members[0].k, np.float32), np.zeros(0, np.int64)
        cols = I8.split_columns(members[0].k, outliers)
        divisors = I8.input_divisors(smooth, outliers).astype(np.float64)
        use_gptq = self.method == "gptq" and activation in self.hessians
        factor = None
        if use_gptq:
            if storage is None:
                inv = 1.0 / divisors
                # Hessian of the widened input: the copies of a channel are equal columns
                factor = gptq_factor((self.hessians[activation] * inv[:, None] * inv[None, :])[np.ix_(cols, cols)])
            else:   # blocks run along the original input; the split happens after decoding
                inv = 1.0 / np.asarray(smooth, np.float64)
                factor = gptq_factor(self.hessians[activation] * inv[:, None] * inv[None, :])
        packed = {}
        key = integer_key(storage)
        for site in members:
            self._pending[(site.name, key)] -= 1
            if storage is not None:
                w_nk = np.ascontiguousarray((weights.pop(site.name) * smooth[:, None]).T)   # [N, K], smoothed
                q, d = gptq_quantize(w_nk, storage, factor=factor) if use_gptq else storage.quantize(w_nk)
                stored = I8.stored_codes(storage, q, d, cols)
                packed[site.name] = (stored, stored.scales)
                continue
            w_t = (weights.pop(site.name) * smooth[:, None])[cols]  # [K + copies, N]: rows scaled by s, copied
            if use_gptq:
                scales = I8.per_channel_scales(w_t, factor.diag)
                codes = gptq_quantize_per_channel(np.ascontiguousarray(w_t.T), factor, scales, I8.WEIGHT_QMAX).T
            else:
                codes, scales = I8.quantize_per_channel(w_t)
            packed[site.name] = (np.ascontiguousarray(codes), scales)
        self._release(activation)
        static_max = I8.static_input_max(self.absmax[activation], divisors)
        return packed, smooth if once else None, "gptq" if use_gptq else "rtn", outliers, static_max

    def _release(self, activation: str) -> None:
        """Free an input's Hessian once no request that needs it is still to be computed."""
        names = {s.name for s in self.src.sites if s.activation == activation}
        if not any(n > 0 and (name, b) not in self._cache for (name, b), n in self._pending.items() if name in names):
            self._factors.pop((activation, False), None)
            self._factors.pop((activation, True), None)
            self.hessians.pop(activation, None)

    def _gptq_group(self, site: G.WeightSite, fmt: BlockFormat) -> tuple[G.QuantizedWeight, str]:
        act = site.activation
        folded = self.folded(site, fmt)
        key = (act, folded)
        if key not in self._factors:
            h = self.fold.hessian(act, self.hessians[act]) if folded else self.hessians[act]
            self._factors[key] = gptq_factor(h, damp=HEAD_DAMP if site.group == "projection" else DAMP)
        members = [s for s in self.src.sites if s.activation == act and s.op == "MatMul"
                   and (s.name == site.name or self._pending.get((s.name, fmt.name), 0) > 0)]
        # every weight that reads this input, quantized in one pass
        parts = gptq_quantize_together([self._weight(s, fmt) for s in members], fmt, self._factors[key])
        if site.name in self._chain_next:   # members == [site]: a head reads its own input
            q, d = parts[0]
            self._chain_done[(site.name, fmt.name)] = (fmt.dequantize(q, d).reshape(q.shape).T, self.hessians[act])
        result = None
        for s, (q, d) in zip(members, parts):
            part = (_packed(fmt, q, d), "awq+gptq" if folded else "gptq")
            if s.name == site.name:
                result = part
            if self._pending.get((s.name, fmt.name), 0) > 0:  # (this request's count is already taken off)
                self._cache[(s.name, fmt.name)] = part
        self._release(act)
        return result

    def _layer_site(self, site: G.WeightSite, fmt: BlockFormat) -> tuple[G.QuantizedWeight, str]:
        """A decoder-layer weight from the per-layer method; every layer is done at the first request."""
        if self._layers is None:
            recipe, texts, threads, progress = self._layer_args
            formats = {s.name: site_format(recipe, s) for s in self.src.sites
                       if s.op == "MatMul" and G.site_position(s.name) is not None and not kept_fp32(recipe, s)}
            self._layers = _layer_method(self.method).run(
                self.src, formats, lambda s: self._weight(s, formats[s.name]), self.norm_edits(recipe), texts,
                threads=threads, progress=progress)
        q, d = self._layers.codes.pop(site.name)
        return _packed(fmt, q, d), f"awq+{self.method}" if self.folded(site, fmt) else self.method

    def layer_manifest_entry(self) -> dict:
        """The manifest entry of what the per-layer method did (per-layer errors or weight changes, texts,
        time), when it ran; else empty."""
        if self._layers is None:
            return {}
        module = _layer_method(self.method)
        return {module.MANIFEST_KEY: dict(self._layers.report, how=module.HOW)}

    def _gptq_chained(self, site: G.WeightSite, prev: G.WeightSite, fmt: BlockFormat) -> tuple[G.QuantizedWeight, str]:
        """GPTQ of a head whose input is the previous head's output, from weights corrected for the
        previous head's quantization error (``gptq.chained_head_weights``)."""
        decoded, hessian = self._chain_done.pop((prev.name, fmt.name))
        w2, h = chained_head_weights(self._weight(prev), decoded, self._weight(site), hessian)
        q, d = gptq_quantize(np.ascontiguousarray(w2.T), fmt, factor=gptq_factor(h, damp=HEAD_DAMP))
        self._release(site.activation)
        return _packed(fmt, q, d), "gptq+chain"


def _layer_method(method: str):
    """The module of a per-layer method (``run``, ``MANIFEST_KEY``, ``HOW``); imported on use (needs torch to run)."""
    if method == "learned":
        from . import learned as module
    else:
        from . import corrected as module
    return module


def _packed(fmt: BlockFormat, q: np.ndarray, d: np.ndarray) -> G.QuantizedWeight:
    """A MatMul weight's codes [N_out, K_in] and scales as a ``QuantizedWeight``."""
    return G.QuantizedWeight(fmt, pack_blocks(fmt, q), d)


def quantize_table(table: np.ndarray, fmt: BlockFormat, search: bool = False) -> G.QuantizedWeight:
    """Quantize the [vocab, hidden] table in row chunks straight into the packed outputs.

    Only one chunk of float32 (read from the memory-mapped fp32 file) and its codes exist at a time
    besides the packed result, instead of several full-size copies of an 805 MB table. ``search``
    picks each block's scale by ``gptq.search_scales`` instead of ggml's rule.
    """
    vocab, hidden = table.shape
    nb = hidden // BLOCK_SIZE
    data = np.empty((vocab, nb, fmt.block_bytes), np.uint8)
    scales = np.empty((vocab, nb), np.float16)
    for start in range(0, vocab, _TABLE_ROWS_PER_CHUNK):
        stop = min(vocab, start + _TABLE_ROWS_PER_CHUNK)
        rows = np.asarray(table[start:stop], dtype=np.float32)
        q, d = scale_search_quantize(rows, fmt) if search else fmt.quantize(rows)
        data[start:stop], scales[start:stop] = pack_blocks(fmt, q), d
    return G.QuantizedWeight(fmt, data, scales)
