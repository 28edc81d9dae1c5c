"""Activation-aware per-channel scales (AWQ, Lin et al. 2023) folded into the graph before 4-bit GPTQ.

A linear layer ``y = x W`` computes the same with ``x' = x / s`` and ``W' = diag(s) W`` for any
positive per-input-channel ``s``. Scaling up the rows of W that meet large activations gives those
weights finer steps inside their Q4_0 blocks. The division of x is folded, exactly, into whatever
produces x, so nothing is added to the graph:

* q/k/v_proj and gate/up_proj read an RMSNorm output: its weight (an fp32 initializer) is divided;
* o_proj reads the attention output, a per-channel linear mix of v: v_proj's output columns are
  divided (one scale per head dimension, shared by the query heads that read the same value head);
* down_proj reads ``gelu(gate) * up``: up_proj's output columns are divided.

``s = rms(x)^alpha`` per channel (from the calibration Hessian's diagonal), with ``alpha`` searched
per layer input on a grid to minimise the calibrated output error ``tr(E^T H E)`` of round-to-nearest
quantization, ``E = W - diag(1/s) Q(diag(s) W)``. GPTQ then runs on the scaled weights with the
Hessian of the scaled input, ``diag(1/s) H diag(1/s)``. Stored blocks stay plain Q4_0.

Only for 4-bit attention and feed-forward groups of the calibrated method: Q8_0 already meets its
target, and round-to-nearest must stay bit-exact to ggml. Measured effect in docs/notes/quant.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .formats import BlockFormat
from .graph import norm_scale_initializer

#: Exponents tried for s = rms(x)^alpha (0 = no scaling, so the search never does worse than none).
#: On 0..1 in steps of 0.1 every one of the real model's 96 inputs chose 0.0-0.4, so the grid stops at
#: 0.6: same choices, a third less search time.
ALPHAS = np.round(np.linspace(0.0, 0.6, 7), 2)
_LAYER = re.compile(r"^(?P<prefix>.*layers\.\d+\.)(?P<module>self_attn|mlp)\.(?P<proj>\w+_proj)\.weight_t$")


@dataclass
class Folding:
    """What the search decided for one bit width: scaled weights and inputs, and the edited norms."""

    row_scales: dict[str, np.ndarray] = field(default_factory=dict)      # weight name -> s (multiply rows)
    column_divisors: dict[str, np.ndarray] = field(default_factory=dict)  # weight name -> s (divide columns)
    input_scales: dict[str, np.ndarray] = field(default_factory=dict)     # activation -> s (x / s)
    norm_divisors: dict[str, np.ndarray] = field(default_factory=dict)    # initializer -> s (divide)
    norm_groups: dict[str, str] = field(default_factory=dict)             # initializer -> weight group
    alphas: dict[str, float] = field(default_factory=dict)               # activation -> chosen alpha

    def weight(self, name: str, w: np.ndarray) -> np.ndarray:
        """``w`` [K_in, N_out] of weight ``name`` after its folds (``w`` itself when it has none)."""
        if name in self.row_scales:
            w = w * self.row_scales[name][:, None]
        if name in self.column_divisors:
            w = w / self.column_divisors[name][None, :]
        return np.asarray(w, np.float32)

    def hessian(self, activation: str, h: np.ndarray) -> np.ndarray:
        """The Hessian of ``activation`` after its input scaling (``h`` itself when it has none)."""
        s = self.input_scales.get(activation)
        return h if s is None else h / np.outer(s, s)


def _rtn_error(w: np.ndarray, s: np.ndarray, h: np.ndarray, fmt: BlockFormat) -> float:
    """Calibrated output error of round-to-nearest quantization of diag(s) w, mapped back by 1/s."""
    ws = np.ascontiguousarray((w * s[:, None]).T, dtype=np.float32)      # [N, K]
    e = (w - fmt.dequantize(*fmt.quantize(ws)).T / s[:, None]).astype(np.float64)
    return float(np.einsum("ij,ij->", e, h @ e))


def search_scales(w: np.ndarray, h: np.ndarray, rows: int, fmt: BlockFormat, tie: int = 1) -> tuple[np.ndarray, float]:
    """Best ``(s, alpha)`` for the weights ``w`` [K, N_total] that read one input with Hessian ``h``.

    ``tie`` > 1 forces equal scales on channels ``c`` and ``c + K/tie`` (o_proj's input is ``tie``
    query heads reading one value head, whose columns carry the fold).
    """
    rms = np.sqrt(np.maximum(np.diag(h) / max(rows, 1), 1e-12))
    if tie > 1:
        rms = np.tile(np.sqrt((rms.reshape(tie, -1) ** 2).mean(axis=0)), tie)
    best = None
    for alpha in ALPHAS:
        s = rms ** alpha
        s = s / np.sqrt(s.max() * s.min())   # centred on 1 so neither W nor the fold drifts in magnitude
        err = _rtn_error(w, s, h, fmt)
        if best is None or err < best[0]:
            best = (err, s.astype(np.float32), float(alpha))
    return best[1], best[2]


def layer_sites(sites, groups: set[str]) -> dict[str, dict[str, object]]:
    """``{layer prefix: {projection name: site}}`` of the decoder-layer sites in ``groups``."""
    layers: dict[str, dict[str, object]] = {}
    for s in sites:
        m = _LAYER.match(s.name)
        if m and s.group in groups:
            layers.setdefault(m["prefix"], {})[m["proj"]] = s
    return layers


def plan(model, sites, hessians: dict, rows: dict, read_weight, groups: set[str], fmt: BlockFormat,
         progress=None) -> Folding:
    """Search the scales of every layer input in ``groups`` (``attention``, ``feed_forward``).

    ``read_weight(site)`` returns a site's fp32 weight [K_in, N_out]. Layers whose graph does not
    have the expected producers (a norm weight used once, v/up projections) are left unscaled.
    ``progress(1)`` is called after each layer (``len(layer_sites(sites, groups))`` calls).
    """
    by_name = {s.name: s for s in sites}
    inits = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1

    layers = layer_sites(sites, groups)
    fold = Folding()
    cache: dict[str, np.ndarray] = {}

    def w(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = fold.weight(name, np.asarray(read_weight(by_name[name]), np.float32))
        return cache[name]

    def apply(activation, members, s, alpha, fold_into):
        fold.input_scales[activation], fold.alphas[activation] = s, alpha
        for m in members:
            fold.row_scales[m.name] = s
            cache.pop(m.name, None)
        kind, target = fold_into
        if kind == "norm":
            fold.norm_divisors[target] = s
            fold.norm_groups[target] = members[0].group
        else:
            fold.column_divisors[target] = s[: by_name[target].n]
            cache.pop(target, None)

    for _prefix, p in sorted(layers.items()):
        # outputs of v and up are folded into first, so the q/k/v and gate/up searches see them
        if "down_proj" in p and "up_proj" in p:
            down, up = p["down_proj"], p["up_proj"]
            s, a = search_scales(w(down.name), hessians[down.activation], rows[down.activation], fmt)
            apply(down.activation, [down], s, a, ("columns", up.name))
        if "o_proj" in p and "v_proj" in p:
            o, v = p["o_proj"], p["v_proj"]
            if o.k % v.n == 0:
                s, a = search_scales(w(o.name), hessians[o.activation], rows[o.activation], fmt, tie=o.k // v.n)
                apply(o.activation, [o], s, a, ("columns", v.name))
        for names in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")):
            members = [p[n] for n in names if n in p]
            if len(members) != len(names) or len({m.activation for m in members}) != 1:
                continue
            act = members[0].activation
            norm = norm_scale_initializer(act, producer, inits, uses)
            if norm is None:
                continue
            s, a = search_scales(np.concatenate([w(m.name) for m in members], axis=1), hessians[act], rows[act], fmt)
            apply(act, members, s, a, ("norm", norm))
        for m in p.values():
            cache.pop(m.name, None)
        if progress is not None:
            progress(1)
    return fold
