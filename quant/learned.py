"""Learned rounding (``--method learned``): each decoder layer's block codes and scales optimised so
the quantized layer reproduces the fp32 layer's output on calibration activations.

Block reconstruction in the style of AutoRound (signed gradient descent on a rounding offset per
weight and a scale factor per block, straight-through rounding): for layer after layer, the fp32
layer's output on the calibration texts is the target and the input is what the already quantized
layers before it produce, so each layer also learns to undo the error that reaches it. The loss is
the error of the residual stream after the layer plus that of the normed state the next layer reads,
each relative per token (a token with a large residual norm counts as much as any other: mean
pooling weighs tokens equally).

The stored formats do not change: codes are ``clip(round(w / d + v))`` in the format's range with
float16 block scales ``d``, so every block decodes exactly as the format (Q4_0, Q8_0) says. The
layer runs as the fp32 graph's own nodes (``quant.torch_graph``). Needs torch (an optional
dependency of the quant stage; the other methods do not import it). What it shares with
``--method corrected`` is in ``quant.layer_calibration``.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from runtime.progress import progress_bar

from .formats import BLOCK_SIZE, BlockFormat, round_half_away
from .layer_calibration import BATCH_TOKENS, LayerCodes, layer_inputs, require_torch

log = logging.getLogger("quant")

#: Optimisation steps per layer (each one calibration batch); AutoRound's default is 200, 100 keeps a
#: real q4_0 build near 15 minutes on 2 cores (200 raised the mean and lowered the minimum: docs/notes/learned.md).
STEPS = 100
#: Step size of the signed gradient descent, decayed linearly to 0 (AutoRound's 1 / steps). The codes
#: start from round-to-nearest, as in AutoRound (starting from GPTQ's was worse: docs/notes/learned.md).
LEARNING_RATE = 1.0 / STEPS
#: Range of the learned scale factor of each block's ggml scale.
SCALE_RANGE = (0.6, 1.2)
#: What each layer's loss compares with the fp32 layer's: the residual stream after it and the
#: normed state the next layer (after the last layer: the pooling) reads (docs/notes/learned.md).
LOSS_TERMS = ("residual", "normed")
#: Every n-th packaged calibration text is used (the prompts alternate, so each stays represented; all
#: texts took twice the time for the same fidelity: docs/notes/learned.md).
TEXT_STRIDE = 3
#: Where the manifest records what the method did, and how it says what the method is.
MANIFEST_KEY = "learned_rounding"
HOW = ("per decoder layer, a rounding offset per weight and a scale factor per block learned by signed gradient "
       "descent so the quantized layer reproduces the fp32 layer's output (quant/learned.py); stored formats "
       "unchanged")


class _BlockRounding:
    """One weight in a block format with a learnable rounding offset ``v`` per weight (in [-0.5, 0.5],
    from 0 = the format's round-to-nearest) and scale factor ``s`` per block (from 1 = ggml's scale)."""

    def __init__(self, torch, w_t: np.ndarray, fmt: BlockFormat):
        self.torch, self.fmt = torch, fmt
        self.k, self.n = w_t.shape
        w = np.ascontiguousarray(np.asarray(w_t, np.float32).T)            # [N, K]: blocks along K
        _, d0 = fmt.quantize(w)
        self.w = torch.from_numpy(w.reshape(self.n, -1, BLOCK_SIZE))
        self.d0 = torch.from_numpy(d0.astype(np.float32)[..., None])       # [N, K/32, 1]
        self.v = torch.zeros_like(self.w, requires_grad=True)
        self.s = torch.ones_like(self.d0, requires_grad=True)

    def weight_t(self):
        """The decoded weight [K, N] as the graph's MatMul reads it (differentiable in ``v`` and ``s``)."""
        torch = self.torch
        d = self.d0 * self.s
        y = self.w / torch.where(d == 0, torch.ones_like(d), d) + self.v
        q = torch.clamp(y + (torch.round(y) - y).detach(), self.fmt.qmin, self.fmt.qmax)   # straight-through
        return (q * d).reshape(self.n, self.k).T

    def final(self) -> tuple[np.ndarray, np.ndarray]:
        """Codes (the format's convention) and float16 scales: the scale is rounded to float16 first and
        the codes are taken against that stored value, so they decode exactly to what is stored."""
        d16 = (self.d0 * self.s.detach()).numpy()[..., 0].astype(np.float16)
        d32 = d16.astype(np.float32)[..., None]
        w = self.w.numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.where(d32 == 0, np.float32(0), w / np.where(d32 == 0, np.float32(1), d32)) + self.v.detach().numpy()
        q = np.clip(round_half_away(y.astype(np.float32)), self.fmt.qmin, self.fmt.qmax)
        q[np.broadcast_to(d32 == 0, q.shape)] = 0
        return self.fmt.from_signed(q.astype(np.int8).reshape(self.n, self.k)), d16

    def decoded_t(self, q: np.ndarray, d16: np.ndarray):
        """The stored weight [K, N] decoded (float32), as a tensor."""
        return self.torch.from_numpy(np.ascontiguousarray(self.fmt.dequantize(q, d16).reshape(self.n, self.k).T))


def learn_layers(src, formats: dict[str, BlockFormat], weight, norm_edits: dict[str, np.ndarray],
                 texts: list[str], threads: int | None = None, steps: int | None = None,
                 progress: bool = True) -> LayerCodes:
    """Learned codes for every decoder-layer weight named in ``formats`` (site name -> its block format).

    ``weight(site)`` gives the float32 weight [K, N] the codes are for (AWQ-scaled where the recipe
    folds scales, with ``norm_edits`` the matching norm divisors); ``texts`` are the calibration texts
    (every ``TEXT_STRIDE``-th is used). Weights of a layer not in ``formats`` stay float32 in its
    forward pass.
    """
    torch = require_torch("learned")
    steps = STEPS if steps is None else steps
    from .torch_graph import GraphLayer

    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(0)
    t_start = time.time()
    used = texts[::TEXT_STRIDE]
    inputs = layer_inputs(src, norm_edits, used, threads)
    layers, read_edited, batches, tokens = inputs.layers, inputs.read, inputs.batches, inputs.tokens
    h, r = [b.pop("h") for b in batches], [b.pop("r") for b in batches]
    state = _Streams(h, r, list(h), list(r))   # the first layer's input is the same for both
    report = {"start": "rtn", "steps_per_layer": steps, "texts": len(used),
              "tokens": tokens, "batch_tokens": BATCH_TOKENS, "learning_rate": LEARNING_RATE,
              "scale_range": list(SCALE_RANGE), "loss": "+".join(LOSS_TERMS), "layers": []}
    codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rng = np.random.default_rng(0)
    bar = progress_bar(len(layers) * steps, "learned rounding", progress, unit="step")
    for layer in layers:
        fp32 = {name: torch.from_numpy(np.array(weight(site), np.float32)) for name, site in layer.weights.items()}
        learned = {name: _BlockRounding(torch, fp32[name].numpy(), formats[name])
                   for name in layer.weights if name in formats}
        step = _LayerStep(torch, GraphLayer(layer, read_edited), batches, state, fp32)
        entry = {"layer": layer.index, "weights": len(learned)}
        if learned:
            first = {name: w.final() for name, w in learned.items()}
            entry["loss_start"] = step.loss_of(step.outputs(_decoded(learned, first)))
            _optimise(torch, step, learned, steps, rng, bar)
            final = {name: w.final() for name, w in learned.items()}
            outs = step.outputs(_decoded(learned, final))
            entry["loss_learned"] = step.loss_of(outs)
            if entry["loss_learned"] > entry["loss_start"]:   # keep the better of start and learned
                final, entry["kept_start"] = first, True
                outs = step.outputs(_decoded(learned, first))
            codes.update(final)
        else:
            bar.update(steps)
            outs = step.outputs({})
        step.advance(outs)   # this layer as stored becomes the next layer's input
        report["layers"].append(entry)
        log.info("learned rounding, layer %d: relative error %.3g (start %.3g)", layer.index,
                 entry.get("loss_learned", float("nan")), entry.get("loss_start", float("nan")))
    bar.close()
    report["seconds"] = round(time.time() - t_start, 1)
    return LayerCodes(codes, report)


#: The entry point ``quant.quantizer`` calls for every per-layer method.
run = learn_layers


def _decoded(learned: dict, codes: dict) -> dict:
    """The stored weights [K, N] of ``codes`` (name -> (codes, scales)) as tensors."""
    return {name: learned[name].decoded_t(*c) for name, c in codes.items()}


@dataclass
class _Streams:
    """Per calibration batch, the current layer's input: from the fp32 layers before it and from the
    quantized ones."""

    h_fp: list
    r_fp: list
    h_q: list
    r_q: list


class _LayerStep:
    """One layer's targets (the fp32 layer on the fp32 inputs) and its loss on the quantized inputs."""

    def __init__(self, torch, graph_layer, batches: list[dict], state: _Streams, fp32: dict):
        self.torch, self.layer, self.batches, self.state, self.fp32 = torch, graph_layer, batches, state, fp32
        with torch.no_grad():
            self.targets = [graph_layer(state.h_fp[i], state.r_fp[i], b["side"], fp32) for i, b in enumerate(batches)]

    def run(self, i: int, weights: dict):
        return self.layer(self.state.h_q[i], self.state.r_q[i], self.batches[i]["side"], {**self.fp32, **weights})

    def _loss(self, i: int, out) -> object:
        (h, r), (th, tr), valid = out, self.targets[i], self.batches[i]["valid"]
        # the residual stream and the normed state the next layer (or, after the last, the pooling) reads
        terms = {"residual": (r, tr), "normed": (h, th)}
        return sum(_relative_error(*terms[t], valid) for t in LOSS_TERMS)

    def loss(self, i: int, weights: dict):
        """Batch ``i``'s loss with ``weights`` (differentiable)."""
        return self._loss(i, self.run(i, weights))

    def outputs(self, weights: dict) -> list:
        """The layer's outputs on every batch's quantized input, with ``weights`` (no gradients)."""
        with self.torch.no_grad():
            return [self.run(i, weights) for i in range(len(self.batches))]

    def loss_of(self, outs: list) -> float:
        """The loss of ``outputs``, averaged over the real tokens of all batches."""
        return _weighted_mean(self.batches, [float(self._loss(i, o)) for i, o in enumerate(outs)])

    def advance(self, outs: list) -> None:
        """Move the streams past this layer: ``outs`` (the quantized layer's outputs) and the targets."""
        st = self.state
        st.h_q, st.r_q = [o[0] for o in outs], [o[1] for o in outs]
        st.h_fp, st.r_fp = [t[0] for t in self.targets], [t[1] for t in self.targets]


def _optimise(torch, step: _LayerStep, learned: dict, steps: int, rng, bar) -> None:
    """Signed gradient descent on every weight's offsets and scale factors, one random batch per step,
    the step size decaying linearly to 0."""
    n = len(step.batches)
    order = np.concatenate([rng.permutation(n) for _ in range(steps // n + 1)])[:steps]
    for k, i in enumerate(order):
        loss = step.loss(int(i), {name: w.weight_t() for name, w in learned.items()})
        loss.backward()
        lr = LEARNING_RATE * (1 - k / steps)
        with torch.no_grad():
            for w in learned.values():
                w.v -= lr * torch.sign(w.v.grad)
                w.v.clamp_(-0.5, 0.5)
                w.s -= lr * torch.sign(w.s.grad)
                w.s.clamp_(*SCALE_RANGE)
                w.v.grad = w.s.grad = None
        bar.update(1)


def _relative_error(out, target, valid):
    """Mean over real tokens of |out - target|^2 / |target|^2 (per token)."""
    d = (out - target)[valid]
    t = target[valid]
    return ((d * d).sum(-1) / (t * t).sum(-1).clamp_min(1e-30)).mean()


def _weighted_mean(batches: list[dict], losses: list[float]) -> float:
    """Mean of per-batch losses weighted by each batch's real tokens."""
    weights = [int(b["valid"].sum()) for b in batches]
    return sum(x * w for x, w in zip(losses, weights)) / max(1, sum(weights))
