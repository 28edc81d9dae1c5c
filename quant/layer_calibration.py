"""What the two per-layer methods share (``--method learned`` and ``--method corrected``): the decoder
layers of the fp32 graph as torch functions, the calibration texts' inputs to the first layer, and
the codes they return.

Both walk the decoder layers in order, each layer run as the fp32 graph's own nodes
(``quant.torch_graph``), and return every layer weight's codes at once. Needs torch (an optional
dependency of the quant stage; the other methods do not import it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime.batching import length_batches, pad_batch

from .source import QuantInputError

#: Token positions per calibration batch (padded rows are not counted).
BATCH_TOKENS = 1024


def require_torch(method: str):
    """torch, or a ``QuantInputError`` saying how to install it."""
    try:
        import torch
    except ImportError:
        raise QuantInputError(f"--method {method} needs torch (an optional dependency of the quant stage): "
                              "pip install torch==2.13.0, or use --method gptq") from None
    return torch


@dataclass
class LayerCodes:
    """Codes and float16 scales of each decoder-layer weight (``{name: (codes [N, K], d [N, K/32])}``,
    the format's own code convention) and what the method did."""

    codes: dict[str, tuple[np.ndarray, np.ndarray]]
    report: dict = field(default_factory=dict)


@dataclass
class LayerInputs:
    """The fp32 graph's decoder layers (``torch_graph.DecoderLayer``), a reader of its initializers with
    the AWQ norm divisors applied, and per calibration batch the first layer's inputs ``h`` / ``r``, the
    side inputs every layer reads (``side``) and which positions are real tokens (``valid``)."""

    layers: list
    read: callable
    batches: list[dict]

    @property
    def tokens(self) -> int:
        """Real tokens over all batches."""
        return int(sum(int(b["valid"].sum()) for b in self.batches))


def layer_inputs(src, norm_edits: dict[str, np.ndarray], texts: list[str], threads: int | None) -> LayerInputs:
    """Decoder layers and calibration batches of ``texts`` (one onnxruntime run of the fp32 graph with
    ``norm_edits``, the norm weights divided by their AWQ scales, as the built graph has them)."""
    from .calibration import _calibration_inputs
    from .torch_graph import decoder_layers, numpy_initializer

    model = src.graph()
    layers = decoder_layers(model, src.sites)
    plain = numpy_initializer(model, src.folder)

    def read(name):
        x = plain(name)
        return (np.asarray(x, np.float32) / norm_edits[name]).astype(np.float32) if name in norm_edits else x

    encodings, _ = _calibration_inputs(src, texts, None)
    return LayerInputs(layers, read, _fetch_batches(src, layers, encodings, threads, read, set(norm_edits)))


def _fetch_batches(src, layers, encodings, threads, read_edited, edited: set[str]) -> list[dict]:
    """Per calibration batch: the first layer's inputs, the side inputs every layer reads (masks, RoPE
    tables, shapes) and which positions are real tokens, from one onnxruntime run of the fp32 graph."""
    import onnx
    import torch
    from onnx import numpy_helper

    from .calibration import _instrumented_session
    from .torch_graph import as_tensor

    model = onnx.load(str(src.folder / src.manifest["model_file"]), load_external_data=False)
    first = layers[0]
    side = sorted({t for layer in layers for t in layer.side_inputs})
    fetch = [first.h_in, first.r_in] + side
    for init in model.graph.initializer:   # the graph as the fold leaves it (the first norm may carry AWQ divisors)
        if init.name in edited:
            init.CopyFrom(numpy_helper.from_array(np.asarray(read_edited(init.name), np.float32), init.name))
    session = _instrumented_session(src, model, fetch, threads)
    pad_id = int(src.manifest.get("pad_token_id", 0))
    batches = []
    for batch in length_batches([len(e) for e in encodings], max_rows=len(encodings), max_tokens=BATCH_TOKENS):
        ids, mask = pad_batch([encodings[i] for i in batch], pad_id)
        outs = dict(zip(fetch, session.run(fetch, {"input_ids": ids, "attention_mask": mask})))
        batches.append({"h": as_tensor(outs[first.h_in]), "r": as_tensor(outs[first.r_in]),
                        "side": {n: as_tensor(outs[n]) for n in side},
                        "valid": torch.from_numpy(mask.astype(bool))})
    return batches
