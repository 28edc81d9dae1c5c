"""Give the exported graph's weights stable, meaningful names.

torch's dynamo exporter folds each Linear weight's transpose into an anonymous constant
(``val_73``). The quant stage and humans need to know which weight is which, so each 2-D MatMul
weight is renamed after its module path (``backbone.layers.0.self_attn.q_proj.weight_t``, stored
[in, out]), read from the exporter's ``name_scopes`` node metadata.
"""
from __future__ import annotations

import ast

import onnx

# Bulky, and they embed the exporting machine's file paths; useless to users of the artifact.
_DROP_METADATA = {"pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node"}


def rename_weights(model: onnx.ModelProto) -> dict[str, str]:
    """Rename MatMul weight initializers in place after their module; returns {old: new}."""
    inits = {i.name: i for i in model.graph.initializer}
    renames: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        weight = node.input[1]
        init = inits.get(weight)
        if init is None or len(init.dims) != 2 or weight in renames or not weight.startswith("val_"):
            continue
        module = _module_path(node)
        if module:
            renames[weight] = f"{module}.weight_t"
    if len(set(renames.values())) != len(renames):
        raise RuntimeError("two MatMul weights map to the same module name; cannot name them uniquely")
    for old, new in renames.items():
        inits[old].name = new
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    return renames


def strip_metadata(model: onnx.ModelProto) -> None:
    """Drop per-node metadata that only matters for debugging the exporter."""
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key not in _DROP_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)


def _module_path(node: onnx.NodeProto) -> str | None:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = ast.literal_eval(prop.value)
            # The last entry is the op itself ("linear_3"); the one before is its module.
            return scopes[-2] if len(scopes) >= 2 and scopes[-2] else None
    return None
