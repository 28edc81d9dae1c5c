"""GPTQ with a corrected target (``--method corrected``): inside each decoder layer, every projection
after the first is quantized from a weight that also undoes the error of the layer's projections
before it.

The chained Dense heads do this between the two heads (``gptq.chained_head_weights``); here it is
done inside each layer. Projections are taken group by group in the layer's order (q/k/v, o,
gate/up, down). For a group that reads X in the fp32 layer and X' once the groups before it are
quantized (same fp32 layer input, so only this layer's own error: correcting the error of the whole
quantized chain fitted the calibration texts, docs/notes/learned.md), its weight W becomes the
least-squares map from X' to the fp32 output X W, pulled towards W by a ridge:

    W_t = (X'^T X' + r I)^-1 (X'^T X W + r W),   r = RIDGE x mean diag(X'^T X')

and GPTQ quantizes W_t with the Hessian X'^T X' (the idea of asymmetric calibration, GPTAQ). q/k/v
read the layer's input, so they get plain GPTQ. AWQ scales, the heads and the token table are the
gptq method's. The stored formats do not change; only the values chosen differ.
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from runtime.progress import progress_bar

from .formats import BlockFormat
from .gptq import DAMP, gptq_factor, gptq_quantize_together
from .layer_calibration import BATCH_TOKENS, LayerCodes, layer_inputs, require_torch

log = logging.getLogger("quant")

#: Ridge towards the fp32 weight, as a fraction of the mean Hessian diagonal: 0.01 gave the same
#: parity means as 0.1 and a query minimum below the 4-bit line (docs/notes/learned.md).
RIDGE = 0.1
#: Where the manifest records what the method did, and how it says what the method is.
MANIFEST_KEY = "corrected_target"
HOW = ("per decoder layer, o_proj, gate/up and down_proj quantized by GPTQ from the least-squares weight that maps "
       "the input they get once the layer's earlier projections are quantized to the fp32 output, ridge towards "
       "the fp32 weight (quant/corrected.py); stored formats unchanged")


def corrected_weight(h: np.ndarray, c: np.ndarray, w: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """The weight [K, N] whose product with the quantized input X' best reproduces the fp32 output X W:
    ``(H + r I)^-1 (C W + r W)`` with ``H = X'^T X'``, ``C = X'^T X`` (float64) and ``r = ridge`` x the mean
    of H's diagonal."""
    r = ridge * float(np.mean(np.diag(h)))
    lhs = h + r * np.eye(len(h))
    return np.linalg.solve(lhs, c @ w + r * w)


def correct_layers(src, formats: dict[str, BlockFormat], weight, norm_edits: dict[str, np.ndarray],
                   texts: list[str], threads: int | None = None, progress: bool = True) -> LayerCodes:
    """Codes for every decoder-layer weight named in ``formats`` (site name -> its block format), GPTQ
    on the corrected weights.

    ``weight(site)`` gives the float32 weight [K, N] (AWQ-scaled where the recipe folds scales, with
    ``norm_edits`` the matching norm divisors); ``texts`` are the calibration texts (all are used: with
    every third the gain was a quarter, docs/notes/learned.md). Weights not in ``formats`` stay float32.
    """
    torch = require_torch("corrected")
    from .torch_graph import GraphLayer

    torch.set_num_threads(threads or os.cpu_count() or 1)
    t_start = time.time()
    inputs = layer_inputs(src, norm_edits, texts, threads)
    batches = inputs.batches
    h_fp, r_fp = [b.pop("h") for b in batches], [b.pop("r") for b in batches]
    report = {"ridge": RIDGE, "texts": len(texts), "tokens": inputs.tokens, "batch_tokens": BATCH_TOKENS,
              "layers": []}
    codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    bar = progress_bar(len(inputs.layers), "corrected layers", progress, unit="layer")
    for layer in inputs.layers:
        graph = GraphLayer(layer, inputs.read)
        reads = _weight_inputs(layer)
        groups = list(dict.fromkeys(reads.values()))   # the inputs, in the order the layer computes them
        fp32 = {name: torch.from_numpy(np.array(weight(site), np.float32)) for name, site in layer.weights.items()}
        current = dict(fp32)   # each group's decoded weights replace these once quantized
        # the fp32 layer on the fp32 input: every group's input X (real tokens) and the next layer's input
        x_fp: dict[str, list] = {a: [] for a in groups[1:]}
        h_first, nxt = 0.0, []
        with torch.no_grad():
            for i, b in enumerate(batches):
                env = graph.values(h_fp[i], r_fp[i], b["side"], fp32)
                x = env[groups[0]][b["valid"]]
                h_first += (x.T @ x).double().numpy()
                for a in x_fp:
                    x_fp[a].append(env[a][b["valid"]])
                nxt.append((env[layer.h_out], env[layer.r_out]))
        entry = {"layer": layer.index, "relative_change": {}}
        for a in groups:
            names = [n for n, x in reads.items() if x == a and n in formats]
            if not names:   # all kept float32 by the recipe
                x_fp.pop(a, None)
                continue
            if a == groups[0]:
                h, targets = h_first, {n: fp32[n].double().numpy() for n in names}
            else:
                h, c = _quantized_input_moments(torch, graph, batches, h_fp, r_fp, current, a, x_fp.pop(a))
                targets = {}
                for n in names:
                    w = fp32[n].double().numpy()
                    targets[n] = corrected_weight(h, c, w)
                    entry["relative_change"][_short(n)] = round(float(np.linalg.norm(targets[n] - w) / np.linalg.norm(w)), 4)
            factor = gptq_factor(h, damp=DAMP)
            for fmt_name in sorted({formats[n].name for n in names}):   # per-layer overrides may mix formats
                members = [n for n in names if formats[n].name == fmt_name]
                fmt = formats[members[0]]
                for n, (q, d) in zip(members, gptq_quantize_together([targets[n] for n in members], fmt, factor)):
                    codes[n] = (q, d)
                    current[n] = torch.from_numpy(np.ascontiguousarray(fmt.dequantize(q, d).reshape(q.shape).T))
        h_fp, r_fp = [o[0] for o in nxt], [o[1] for o in nxt]
        report["layers"].append(entry)
        log.info("corrected target, layer %d: relative weight change %s", layer.index, entry["relative_change"])
        bar.update(1)
    bar.close()
    report["seconds"] = round(time.time() - t_start, 1)
    return LayerCodes(codes, report)


#: The entry point ``quant.quantizer`` calls for every per-layer method.
run = correct_layers


def _weight_inputs(layer) -> dict[str, str]:
    """Each projection weight of the layer -> the input tensor it multiplies, in node order."""
    return {n.input[1]: n.input[0] for n in layer.nodes if n.op_type == "MatMul" and n.input[1] in layer.weights}


def _quantized_input_moments(torch, graph, batches, h_fp, r_fp, current, tensor, x_fp):
    """``X'^T X'`` and ``X'^T X`` (float64) for ``tensor``: X' computed from the fp32 layer input with
    the groups before it quantized (``current``), X the fp32 values (per batch, real tokens)."""
    k = x_fp[0].shape[-1]
    h, c = np.zeros((k, k)), np.zeros((k, k))
    with torch.no_grad():
        for i, b in enumerate(batches):
            xq = graph.values(h_fp[i], r_fp[i], b["side"], current, until=tensor)[tensor][b["valid"]]
            h += (xq.T @ xq).double().numpy()
            c += (xq.T @ x_fp[i]).double().numpy()
            x_fp[i] = None   # freed as it is used
    return h, c


def _short(name: str) -> str:
    """``backbone.layers.3.mlp.down_proj.weight_t`` -> ``down``."""
    part = name.split(".")[-2]
    return part[:-5] if part.endswith("_proj") else part
