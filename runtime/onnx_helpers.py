"""ONNX files with external weights, for the build stages (export and quant) that both write them.

Reading one initializer (memory-mapped), loading small ones into the graph, saving with one external
data file, and onnxruntime's contrib domain with its fused-norm operators. The runtime's own modules
never import this one: it needs the ``onnx`` package, which the runtime does not depend on, so onnx
is imported inside each function.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: onnxruntime's contrib-operator domain (MatMulNBits, fused norms, MatMulIntegerToFloat).
MS_DOMAIN = "com.microsoft"
MS_OPSET = 1
#: onnxruntime's fused RMSNorm operators (export writes them) -> index of their scale input (quant
#: folds activation scales into it).
FUSED_NORM_SCALE_INPUT = {"SimplifiedLayerNormalization": 1, "SkipSimplifiedLayerNormalization": 2}
#: Name of the one external weights file beside ``model.onnx``.
DATA_FILE = "model.onnx.data"


class GraphError(ValueError):
    """A graph or its external data is not what the build stage expects."""


def read_initializer(tensor, base_dir: str | Path) -> np.ndarray:
    """The initializer's values; external data is memory-mapped read-only, not copied into memory."""
    from onnx import TensorProto, helper, numpy_helper

    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    shape = tuple(int(d) for d in tensor.dims)
    if tensor.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    info = {e.key: e.value for e in tensor.external_data}
    path = Path(base_dir) / info["location"]
    offset = int(info.get("offset", 0))
    want = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if "length" in info and int(info["length"]) != want:
        raise GraphError(f"external data of {tensor.name!r} has {info['length']} bytes, expected {want}")
    if not path.is_file() or path.stat().st_size < offset + want:
        raise GraphError(f"external data of {tensor.name!r} is missing or truncated in {path}; re-copy the artifact")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def internalize_external_data(model, base_dir: str | Path, skip: set[str] = frozenset(),
                              max_bytes: int | None = None) -> None:
    """Load the external data of every initializer not in ``skip`` (and, with ``max_bytes``, of at
    most that size) into the proto."""
    from onnx import TensorProto
    from onnx.external_data_helper import load_external_data_for_tensor

    for init in model.graph.initializer:
        if init.name in skip or init.data_location != TensorProto.EXTERNAL:
            continue
        if max_bytes is not None and _external_length(init) > max_bytes:
            continue
        load_external_data_for_tensor(init, str(base_dir))
        init.data_location = TensorProto.DEFAULT
        del init.external_data[:]


def _external_length(tensor) -> int:
    from onnx import helper

    info = {e.key: e.value for e in tensor.external_data}
    if "length" in info:
        return int(info["length"])
    return int(np.prod(tensor.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def add_contrib_opset(model) -> None:
    """Declare onnxruntime's com.microsoft domain (idempotent)."""
    from onnx import helper

    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, MS_OPSET))


def opset_imports(model) -> dict[str, int]:
    """``{domain: version}`` of the model, with the default domain spelled ``ai.onnx``."""
    return {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import}


def save_with_external_data(model, path: str | Path, data_name: str = DATA_FILE) -> None:
    """Write ``path`` plus one external data file beside it (onnxruntime memory-maps it at load)."""
    import onnx

    path = Path(path)
    if (path.parent / data_name).exists():
        # onnx appends to an existing data file; a stale one would corrupt the offsets.
        raise FileExistsError(f"{path.parent / data_name} already exists")
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    # onnx creates the data file private (0600); give it the usual umask-based mode like model.onnx.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path.parent / data_name, 0o666 & ~umask)
