"""The quant stage's input: a checked fp32 artifact folder and the weights it can quantize."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx

from runtime.artifact import ArtifactError, read_manifest, verify_files

from . import graph as G


class QuantInputError(ValueError):
    """The --in folder is not an fp32 artifact this stage can quantize, or an option is invalid."""


@dataclass
class Fp32Source:
    """A checked fp32 artifact: its folder, manifest, the sha256 of its weights and its weight sites."""

    folder: Path
    manifest: dict
    data_sha256: str
    sites: list[G.WeightSite] = field(default_factory=list)

    def graph(self) -> onnx.ModelProto:
        """The fp32 graph without its weights (they stay in the external data file)."""
        return onnx.load(str(self.folder / self.manifest["model_file"]), load_external_data=False)


def open_fp32_artifact(folder: str | Path, verify: bool = True) -> Fp32Source:
    """Check that ``folder`` is an fp32 artifact (manifest, variant, files, graph contract) and describe it.

    Raises ``QuantInputError`` with the problem and the fix.
    """
    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
    except ArtifactError as exc:
        raise QuantInputError(f"--in {str(folder)!r} is not an fp32 artifact: {exc}") from exc
    variant = manifest.get("variant")
    if variant != "fp32":
        raise QuantInputError(f"--in {str(folder)!r} holds the {variant!r} variant; quantize from the fp32 artifact "
                              "written by `embeddinggemma-export` (quantizing a quantized model compounds the error)")
    try:
        verify_files(folder, manifest, check_hashes=verify)
    except ArtifactError as exc:
        raise QuantInputError(str(exc)) from exc
    model_file = manifest["model_file"]
    model = onnx.load(str(folder / model_file), load_external_data=False)
    try:
        sites = G.find_weight_sites(model)
    except G.GraphError as exc:
        raise QuantInputError(f"{folder / model_file}: {exc}") from exc
    data_files = sorted({e.value for init in model.graph.initializer for e in init.external_data if e.key == "location"})
    data_sha = ",".join(manifest["files"][name]["sha256"] for name in data_files if name in manifest["files"])
    return Fp32Source(folder, manifest, data_sha, sites)
