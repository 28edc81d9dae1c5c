"""The web embedder (web/) against the Python runtime.

Fast tier: the tiny artifact and its quantized variants; tests/web_reference.py writes the Python
runtime's vectors, and node's own test runner runs web/test/ (the module in Node on
onnxruntime-web's wasm backend) and, where Chromium is installed, web/browser-test/ (the demo page in
headless Chromium). Real-model tier: the demo page on the real fp32, q4_0, w8a8 and w8a8_s4 artifacts.
Skips loudly when node or web/node_modules is missing (``bash scripts/setup-web.sh`` installs them).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from web_reference import write_reference

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
# Optional: a folder of real quantized artifacts to test in the browser instead of building q4_0 and
# w8a8 here (saves ~2 minutes), e.g. the output of `embeddinggemma-quant --variant all`.
REAL_VARIANTS_ENV = "EMBEDDINGGEMMA_WEB_ARTIFACTS"


def _node_skip_reason() -> str | None:
    if not shutil.which("node"):
        return "web tests skipped: node is not installed (Node.js >= 20; then `bash scripts/setup-web.sh`)"
    major = subprocess.run(["node", "-p", "process.versions.node.split('.')[0]"], capture_output=True, text=True).stdout.strip()
    if not major.isdigit() or int(major) < 20:
        return f"web tests skipped: node {major or '?'} is older than 20"
    if not (WEB / "node_modules" / "onnxruntime-web").is_dir():
        return "web tests skipped: web/node_modules is missing; run `bash scripts/setup-web.sh` (npm ci)"
    return None


def _chromium() -> str | None:
    return next((p for p in (os.environ.get("CHROMIUM"), "/usr/bin/chromium") if p and Path(p).exists()), None)


def _skip_without_node():
    reason = _node_skip_reason()
    if reason:
        pytest.skip(reason)


def _run_node(folder: str, reference: Path, results: Path, timeout: int, extra_env: dict | None = None) -> dict:
    """Run ``node --test web/<folder>/`` against ``reference``; fail with its output, return its results."""
    env = dict(os.environ, EMBEDDINGGEMMA_WEB_REFERENCE=str(reference), EMBEDDINGGEMMA_WEB_RESULTS=str(results),
               **(extra_env or {}))
    proc = subprocess.run(["node", "--test", "--test-reporter=spec", f"{folder}/"], cwd=WEB, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"node --test {folder}/ failed (exit {proc.returncode}):\n{proc.stdout[-20000:]}\n{proc.stderr[-5000:]}")
    assert "# fail 0" in proc.stdout or "ℹ fail 0" in proc.stdout, proc.stdout[-5000:]
    got = json.loads(results.read_text()) if results.exists() else {}
    for name, r in got.items():
        print(f"{folder} parity {name}: {r['texts']} vectors, min cosine {r['min']:.7f}, mean {r['mean']:.7f} (floor {r['floor']})")
    return got


@pytest.fixture(scope="module")
def tiny_variants(tiny_artifact, tmp_path_factory) -> dict[str, Path]:
    """The four standard variants of the tiny model, MatMulNBits at accuracy_level 4 as the shipped
    real builds: wasm runs level 4 as level 0, which the reference's second comparison covers."""
    from quant.cli import main

    parent = tmp_path_factory.mktemp("web-quant") / "variants"
    for variant, out in (("all", parent), ("w8a8_s4", parent / "w8a8_s4")):
        assert main(["--in", str(tiny_artifact), "--variant", variant, "--out", str(out), "--method", "rtn",
                     "--accuracy-level", "4", "--no-check", "-q", "--threads", "1"]) == 0
    return {v: parent / v for v in ("q8_0", "q4_0", "e4_a8_f4_p4", "w8a8", "w8a8_s4")}


def test_node_module_matches_python_runtime(tiny_artifact, tiny_variants, tmp_path):
    """web/test/: parity (cos >= 0.9999 on the same arithmetic) for fp32 and every variant, prompts,
    titles, dims, truncation, token counts, batching rule, errors, the demo server."""
    _skip_without_node()
    reference = write_reference(tmp_path / "reference.json", {"fp32": tiny_artifact, **tiny_variants})
    got = _run_node("test", reference, tmp_path / "results.json", timeout=600)
    assert set(got) >= {"fp32", "q4_0", "w8a8", "w8a8_s4", "q4_0 (level-0 arithmetic)"}
    assert all(r["min"] >= r["floor"] for r in got.values())


def test_demo_page_in_headless_chromium_tiny(tiny_artifact, tiny_variants, tmp_path):
    """web/browser-test/ on the tiny fp32, q4_0 and w8a8: isolation, threads, parity, search, errors."""
    _skip_without_node()
    if not _chromium():
        pytest.skip("browser test skipped: no /usr/bin/chromium (`bash scripts/setup-web.sh --browser` installs Debian's)")
    reference = write_reference(tmp_path / "reference.json", {"fp32": tiny_artifact, "q4_0": tiny_variants["q4_0"],
                                                              "w8a8": tiny_variants["w8a8"]})
    got = _run_node("browser-test", reference, tmp_path / "results.json", timeout=600)
    assert {"fp32", "q4_0", "w8a8"} <= set(got)


@pytest.fixture(scope="module")
def real_variants(real_artifact, tmp_path_factory) -> dict[str, Path]:
    """Real q4_0, w8a8 and w8a8_s4 (round-to-nearest, accuracy_level 4 like the shipped builds), or the
    folders under $EMBEDDINGGEMMA_WEB_ARTIFACTS."""
    given = os.environ.get(REAL_VARIANTS_ENV)
    if given:
        return {p.name: p for p in sorted(Path(given).iterdir()) if (p / "embedder.json").is_file()}
    from quant.build import BuildOptions, build_variants
    from quant.calibration import load_calibration_texts
    from quant.recipe import parse_recipe

    parent = tmp_path_factory.mktemp("web-real")
    names = ("q4_0", "w8a8", "w8a8_s4")
    targets = [(parse_recipe(v), parent / v) for v in names]
    # Parity compares web and Python on the same artifact, so w8a8's smoothing may come from a few
    # texts: 40 of the 439 make the build minutes shorter (the full calibration dominated this test).
    build_variants(real_artifact, targets, BuildOptions(method="rtn", accuracy_level=4, progress=False,
                                                        verify_input=False, check=False,
                                                        calibration_texts=tuple(load_calibration_texts()[:40])))
    return {v: parent / v for v in names}


@pytest.mark.real_model
def test_demo_page_in_headless_chromium_real(real_artifact, real_variants, tmp_path):
    """The demo page on the real artifacts in headless Chromium: every variant loads cross-origin
    isolated with 2 threads and embeds like the Python runtime (cos >= 0.9999 on the same arithmetic)."""
    _skip_without_node()
    if not _chromium():
        pytest.skip("browser test skipped: no /usr/bin/chromium (`bash scripts/setup-web.sh --browser` installs Debian's)")
    # smallest last: the error checks load it again
    order = sorted(real_variants.items(), key=lambda kv: -sum(e["size"] for e in json.loads((kv[1] / "embedder.json").read_text())["files"].values()))
    reference = write_reference(tmp_path / "reference.json", {"fp32": real_artifact, **dict(order)})
    # search with the variant the demo recommends, over a few passages (the whole corpus takes minutes)
    search = {"EMBEDDINGGEMMA_WEB_SEARCH_WITH": "w8a8"} if "w8a8" in real_variants else {}
    got = _run_node("browser-test", reference, tmp_path / "results.json", timeout=1800,
                    extra_env={**search, "EMBEDDINGGEMMA_WEB_CORPUS_LIMIT": "16"})
    assert {"fp32", *real_variants} <= set(got)
