"""Artifact folder -> mobile folder: ORT-format model, required-operators config, one tokenizer file.

The ORT format (onnxruntime's flatbuffer model format) is what onnxruntime-android, onnxruntime-objc /
onnxruntime-c and reduced (minimal) onnxruntime builds load; the conversion applies the graph
optimizations once, for the target platform, so a phone does no optimization work at load. The
operator list (``required_operators.config``) is onnxruntime's input for a reduced build that holds
only the kernels this model needs.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from runtime.artifact import ArtifactError, read_manifest, session_config, verify_files, write_manifest
from runtime.outputs import staged_output
from runtime.tokenizer_files import resolve_choice, ship_tokenizer

MODEL_FILE = "model.ort"
OPERATORS_FILE = "required_operators.config"
#: The tokenizer file a mobile folder ships: the sentencepiece model (4.7 MB, tens of MB resident)
#: over tokenizer.json (33 MB, hundreds of MB resident) wherever the artifact has it (docs/devices.md).
TOKENIZERS = ("auto", "sentencepiece", "tokenizers")
PLATFORMS = ("arm", "amd64")


class MobileInputError(ValueError):
    """The input is not an artifact this command can package, or an option is invalid."""


def package_for_mobile(source: str | Path, out: str | Path, *, tokenizer: str = "auto", platform: str = "arm",
                       fold_constants: bool = False, force: bool = False, verify: bool = True) -> Path:
    """Write the mobile folder of the artifact at ``source`` to ``out`` (atomically) and return ``out``.

    tokenizer: which one file to ship (``auto``: sentencepiece when the artifact has it). platform:
    the CPU family onnxruntime optimizes for (``arm`` for phones). fold_constants: decode the weights
    the graph decodes at load (Q8_0 heads) now, as float32 in the file (about 14 MB more for q8_0);
    by default they stay packed and a reduced build decodes them on each call (two small matmuls).
    """
    import onnxruntime as ort

    source = Path(source)
    manifest = _checked_source(source, verify)
    if tokenizer not in TOKENIZERS:   # a mobile folder ships one tokenizer file, never "all"
        raise MobileInputError(f"unknown --tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZERS)}")
    if platform not in PLATFORMS:
        raise MobileInputError(f"unknown --platform {platform!r}; choose one of {', '.join(PLATFORMS)}")
    groups = (manifest.get("quantization") or {}).get("groups") or {}
    if not fold_constants and any("stored_as" in g for g in groups.values()):
        # the ORT format is not folded when a phone loads it: the blocks would be re-coded on every call
        raise MobileInputError(f"{source} stores its int8 weights as blocks that a session re-codes when it loads "
                               f"({manifest.get('variant')}); a mobile folder would re-code them on every call. "
                               "Pass --fold (the folder then holds the int8 codes, w8a8's size) or package w8a8")
    try:
        resolve_choice(manifest, tokenizer)
    except ValueError as exc:
        raise MobileInputError(f"{source}: {exc} (--tokenizer)") from None
    with staged_output(out, force=force) as stage:
        shipped = ship_tokenizer(source, manifest, stage, tokenizer)
        model, widened = source / manifest["model_file"], stage / "widened"
        if not fold_constants:
            model = _with_wide_matmulnbits_scales(model, widened)
        _convert(model, stage / MODEL_FILE, platform, fold_constants, session_config(manifest))
        shutil.rmtree(widened, ignore_errors=True)   # the converter's input only, not part of the folder
        _operator_config(stage)
        mobile = {k: v for k, v in shipped.items() if k not in ("files", "format", "format_version", "quant_check")}
        mobile["model_file"] = MODEL_FILE
        mobile["mobile"] = {"model_format": "ORT", "optimization": "Fixed (applied at conversion)",
                            "platform": platform, "constants_folded": fold_constants,
                            "converted_with": {"onnxruntime": ort.__version__},
                            "required_operators": OPERATORS_FILE,
                            "source_model_sha256": manifest["files"][manifest["model_file"]]["sha256"]}
        write_manifest(stage, mobile)
    return Path(out)


def _operator_config(stage: Path) -> None:
    """``required_operators.config`` of the staged model (onnxruntime's own writer), naming the model
    file as it will be called rather than by its staging path."""
    import contextlib
    import io

    from onnxruntime.tools.ort_format_model import create_config_from_models

    with contextlib.redirect_stdout(io.StringIO()):   # the writer prints where it wrote
        create_config_from_models([stage / MODEL_FILE], stage / OPERATORS_FILE, enable_type_reduction=False)
    path = stage / OPERATORS_FILE
    path.write_text(path.read_text(encoding="utf-8").replace(str(stage / MODEL_FILE), MODEL_FILE), encoding="utf-8")


def _checked_source(source: Path, verify: bool) -> dict:
    try:
        manifest = read_manifest(source)
        verify_files(source, manifest, check_hashes=verify)
    except ArtifactError as exc:
        raise MobileInputError(f"--in {str(source)!r} is not an artifact folder: {exc}") from None
    if manifest.get("mobile"):
        raise MobileInputError(f"--in {str(source)!r} is already a mobile folder; package the artifact it came from")
    return manifest


def _with_wide_matmulnbits_scales(model: Path, folder: Path) -> Path:
    """``model``, or a copy in ``folder`` in which every Cast of an initializer that only MatMulNBits
    reads (its scales, stored as float16) is replaced by the float32 initializer it makes: what
    constant folding does at load, done here because the conversion runs without it, so the kernels
    get constant scales to pre-pack, as from an artifact whose scales are stored in float32."""
    import onnx
    from onnx import numpy_helper

    def widen_casts(graph) -> list:
        inits = {i.name for i in graph.initializer}
        readers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        return [n for n in graph.node if n.op_type == "Cast" and n.input[0] in inits and readers.get(n.output[0])
                and all(r.op_type == "MatMulNBits" for r in readers[n.output[0]])]

    if not widen_casts(onnx.load(str(model), load_external_data=False).graph):
        return model
    full = onnx.load(str(model))
    graph = full.graph
    casts = widen_casts(graph)
    stored = {i.name: i for i in graph.initializer}
    for cast in casts:
        to = onnx.helper.tensor_dtype_to_np_dtype(next(a.i for a in cast.attribute if a.name == "to"))
        graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(stored[cast.input[0]]).astype(to),
                                                         cast.output[0]))
        graph.node.remove(cast)
    still_read = {i for n in graph.node for i in n.input}
    for name in {c.input[0] for c in casts} - still_read:
        graph.initializer.remove(stored[name])
    folder.mkdir()
    target = folder / model.name
    onnx.save(full, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{model.name}.data", size_threshold=1024)
    return target


def _convert(model: Path, target: Path, platform: str, fold_constants: bool, config: dict[str, str]) -> None:
    """Optimize the ONNX model for ``platform`` and save it in ORT format: what onnxruntime's
    ``convert_onnx_models_to_ort --optimization_style Fixed --target_platform ...`` does (level
    "all", no x86-only NCHWc layouts for arm), plus the choice of folding decoded weights and the
    artifact's session ``config`` entries (what its constant ops need to fold)."""
    import onnxruntime as ort

    from runtime.embedder import runtime_session_options

    # the artifact's config entries as the runtime applies them (one owner of that rule)
    so = runtime_session_options(low_memory=False, config=config)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(target)
    so.add_session_config_entry("session.save_model_format", "ORT")
    so.add_session_config_entry("session.qdqisint8allowed", "1" if platform == "arm" else "0")
    disabled = ([] if platform == "amd64" else ["NchwcTransformer"]) + ([] if fold_constants else ["ConstantFolding"])
    ort.InferenceSession(str(model), sess_options=so, providers=["CPUExecutionProvider"],
                         disabled_optimizers=disabled)
