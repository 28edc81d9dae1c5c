"""Shared fixtures. Two tiers: fast tests on a tiny random Gemma 3 (no download), and real-model
tests marked ``real_model`` that run only when EMBEDDINGGEMMA_DIR points at the real checkpoint."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REAL_DIR_ENV = "EMBEDDINGGEMMA_DIR"
# Optional: reuse an fp32 artifact already exported from that checkpoint (saves ~3 minutes).
REAL_ARTIFACT_ENV = "EMBEDDINGGEMMA_FP32_ARTIFACT"
TINY_DIMS = (64, 32, 16)


def pytest_collection_modifyitems(config, items):
    if not os.environ.get(REAL_DIR_ENV):
        skip = pytest.mark.skip(reason=f"real-model tier skipped: set {REAL_DIR_ENV} to the google/embeddinggemma-300m folder")
        for item in items:
            if "real_model" in item.keywords:
                item.add_marker(skip)
    if any("arm64" in item.keywords for item in items):
        missing = _arm64_root_missing()
        if missing:
            skip = pytest.mark.skip(reason=f"arm64 tier skipped: {missing}")
            for item in items:
                if "arm64" in item.keywords:
                    item.add_marker(skip)


def _arm64_root_missing() -> str:
    """Why the arm64 tier cannot run here ("" when the root from scripts/setup-arm64.sh is ready)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        from scripts.arm64.emulator import ArmRootError, find_root

        find_root()
    except ArmRootError as exc:
        return str(exc)
    finally:
        sys.path.pop(0)
    return ""


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    bar = "!" * 78
    skipped = terminalreporter.stats.get("skipped", [])
    real = [r for r in skipped if "real_model" in getattr(r, "keywords", {})]
    if real:
        terminalreporter.write_line(bar, yellow=True, bold=True)
        terminalreporter.write_line(
            f"REAL-MODEL TIER SKIPPED ({len(real)} tests): {REAL_DIR_ENV} is not set. Parity with the real "
            "EmbeddingGemma was NOT checked in this run.", yellow=True, bold=True)
        terminalreporter.write_line(bar, yellow=True, bold=True)
    arm = [r for r in skipped if "arm64" in getattr(r, "keywords", {})]
    if arm:
        terminalreporter.write_line(bar, yellow=True, bold=True)
        terminalreporter.write_line(
            f"ARM64 TIER SKIPPED ({len(arm)} tests): no arm64 root (run scripts/setup-arm64.sh). The runtime was "
            "NOT checked on emulated arm64 CPUs in this run.", yellow=True, bold=True)
        terminalreporter.write_line(bar, yellow=True, bold=True)
    if any("RAY CLUSTER TEST SKIPPED" in str(getattr(r, "longrepr", "")) for r in skipped):
        terminalreporter.write_line(bar, yellow=True, bold=True)
        terminalreporter.write_line(
            "RAY CLUSTER TEST SKIPPED: ray[data] is not installed, so embed-corpus --engine ray was NOT checked "
            "(pip install -e '.[ray]').", yellow=True, bold=True)
        terminalreporter.write_line(bar, yellow=True, bold=True)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from tiny_checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "checkpoint")


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    from export.build import export_artifact
    from export.checkpoint import resolve_checkpoint

    out = tmp_path_factory.mktemp("tiny-artifact") / "fp32"
    return export_artifact(resolve_checkpoint(str(tiny_checkpoint)), out, matryoshka_dims=TINY_DIMS)


@pytest.fixture(scope="session")
def tiny_st(tiny_checkpoint):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_checkpoint), device="cpu")


@pytest.fixture(scope="session")
def real_checkpoint() -> Path:
    path = Path(os.environ[REAL_DIR_ENV]).expanduser()
    assert (path / "modules.json").is_file(), f"{REAL_DIR_ENV}={path} is not a sentence-transformers checkpoint"
    return path


@pytest.fixture(scope="session")
def real_artifact(real_checkpoint, tmp_path_factory) -> Path:
    reuse = os.environ.get(REAL_ARTIFACT_ENV)
    if reuse:
        return Path(reuse)
    from export.build import export_artifact
    from export.checkpoint import resolve_checkpoint

    return export_artifact(resolve_checkpoint(str(real_checkpoint)), tmp_path_factory.mktemp("real") / "fp32")


@pytest.fixture(scope="session")
def real_st(real_checkpoint):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(real_checkpoint), device="cpu")


@pytest.fixture(scope="session")
def rtn_variants(real_artifact, tmp_path_factory) -> dict[str, Path]:
    """Real q8_0 and q4_0 by round-to-nearest at accuracy level 0 (quick, and independent of this CPU)."""
    from quant.build import BuildOptions, build_variants
    from quant.recipe import parse_recipe

    parent = tmp_path_factory.mktemp("real-quant")
    targets = [(parse_recipe(v), parent / v) for v in ("q8_0", "q4_0")]
    build_variants(real_artifact, targets, BuildOptions(method="rtn", accuracy_level=0, progress=False,
                                                        verify_input=False))
    return {v: parent / v for v in ("q8_0", "q4_0")}
