"""Per-layer overrides and the size budget on the tiny model: grammar, exact formats, manifest plan, bytes.

Overridden weights are checked against gguf's quantizers like every other stored weight; the budget
against the files actually written.
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

from quant import graph as G
from quant.budget import parse_size
from quant.recipe import RecipeError, parse_recipe
from runtime import Embedder
from runtime.artifact import read_manifest
from test_quant_tiny import RTN, TEXTS, assert_stored_bytes_equal_gguf, run_cli


def _model_bytes(folder) -> int:
    return sum((folder / n).stat().st_size for n in ("model.onnx", "model.onnx.data"))


def _bits_by_weight(folder) -> dict[str, int]:
    """MatMulNBits ``bits`` per decoder-layer weight, read from the graph (not the manifest)."""
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    out = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            name = node.input[1].rsplit(".q", 1)[0]
            if G.site_position(name):
                out[name] = next(a.i for a in node.attribute if a.name == "bits")
    return out


def test_override_grammar_and_precedence():
    r = parse_recipe("q4_0:f8@2-3,v8@0,down4@3")
    assert r.name == "q4_0:f8@2-3,v8@0,down4@3" and r.recipe == "e4_a4_f4_p4:f8@2-3,v8@0,down4@3"
    assert parse_recipe(r.name) == r and parse_recipe(r.recipe) == r
    fmt = lambda group, layer, proj: r.format_for(group, (layer, proj)).name   # noqa: E731
    assert fmt("feed_forward", 2, "up") == "Q8_0" and fmt("feed_forward", 1, "up") == "Q4_0"
    assert fmt("feed_forward", 3, "down") == "Q4_0"    # the later override wins
    assert fmt("attention", 0, "v") == "Q8_0" and fmt("attention", 0, "k") == "Q4_0"
    assert r.format_for("embeddings").name == "Q4_0"
    # a uniform recipe stays exactly itself; an override on every layer is the same plan as a group code
    assert parse_recipe("q4_0").overrides == () and parse_recipe("q4_0").name == "q4_0"
    assert parse_recipe("q4_0:a8@*").format_for("attention", (7, "o")).name == "Q8_0"


@pytest.mark.parametrize("text, match", [
    ("q4_0:", "no overrides"),
    ("q4_0:x8", "SEL"),
    ("q4_0:f8@5-3", "runs backwards"),
    ("q4_0:f3", "4 \\(Q4_0\\)"),
    ("w8a8:f4@1", "integer path"),
])
def test_override_errors_say_what_is_allowed(text, match):
    with pytest.raises(RecipeError, match=match):
        parse_recipe(text)


def test_sizes_parse_in_decimal_and_binary_units():
    assert parse_size("200MB") == 200_000_000 and parse_size("1.5 MiB") == 1_572_864 and parse_size("4096") == 4096
    with pytest.raises(ValueError, match="200MB"):
        parse_size("lots")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_budget_recipe_is_held_to_its_base_formats_fidelity_target():
    from quant.fidelity import TARGETS, target_for

    assert target_for("q4_0:v8@0-23,down8@16-23") == TARGETS["q4_0"] == (0.99, 0.97)
    assert target_for("q8_0") == (0.9995, 0.999)
    assert target_for("e8_a8_f4_p8") is None and target_for("no such thing") is None and target_for(None) is None


def test_overrides_store_exact_formats_and_the_plan_round_trips(tiny_artifact, tmp_path):
    out = tmp_path / "mixed"
    assert run_cli("--in", tiny_artifact, "--variant", "q4_0:f8@2-3,v8@0", "--out", out, "-q", "--threads", "1",
                   *RTN) == 0
    q = read_manifest(out)["quantization"]
    recipe = parse_recipe(q["recipe"])
    assert q["site_plan"]["overrides"] == ["f8@2-3", "v8@0"]
    changed = set(q["site_plan"]["sites"])
    assert changed == {f"backbone.layers.{i}.mlp.{p}_proj.weight_t" for i in (2, 3) for p in ("gate", "up", "down")} \
        | {"backbone.layers.0.self_attn.v_proj.weight_t"}
    # the graph agrees with the recipe read back from the manifest, weight by weight
    bits = _bits_by_weight(out)
    assert len(bits) == 4 * 7
    for name, b in bits.items():
        assert b == recipe.format_for(G.group_of(name), G.site_position(name)).bits, name
        assert (b == 8) == (name in changed)
    # stored values are the formats' own: Q8_0 where overridden, Q4_0 beside it (gguf reference)
    assert_stored_bytes_equal_gguf(out, tiny_artifact, "backbone.layers.2.mlp.down_proj.weight_t", True, "Q8_0")
    assert_stored_bytes_equal_gguf(out, tiny_artifact, "backbone.layers.0.self_attn.v_proj.weight_t", True, "Q8_0")
    assert_stored_bytes_equal_gguf(out, tiny_artifact, "backbone.layers.1.mlp.down_proj.weight_t", True, "Q4_0")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_budget_is_respected_to_the_byte_and_rebuilds_by_name(tiny_artifact, tmp_path):
    base = tmp_path / "q4_0"
    assert run_cli("--in", tiny_artifact, "--variant", "q4_0", "--out", base, "-q", "--threads", "1", *RTN) == 0
    base_bytes = _model_bytes(base)
    budget = base_bytes + 12_000
    out = tmp_path / "budget"
    assert run_cli("--in", tiny_artifact, "--variant", "q4_0", "--budget", str(budget), "--out", out, "-q",
                   "--threads", "1", *RTN) == 0
    m = read_manifest(out)
    q = m["quantization"]
    written = _model_bytes(out)
    assert base_bytes < written <= budget
    assert q["budget"]["model_bytes"] == written and q["budget"]["bytes"] == budget
    assert q["budget"]["base_model_bytes"] == base_bytes and q["budget"]["upgraded_weights"] == len(q["site_plan"]["sites"]) > 0
    assert set(q["site_plan"]["sites"].values()) == {"Q8_0"}
    # the recipe in the manifest rebuilds the same model files without a budget
    again = tmp_path / "again"
    assert run_cli("--in", tiny_artifact, "--variant", m["variant"], "--out", again, "-q", "--threads", "1", *RTN) == 0
    for name in ("model.onnx", "model.onnx.data"):
        assert (again / name).read_bytes() == (out / name).read_bytes()
    # spending the bytes on 8-bit weights brings the vectors closer to fp32 than plain q4_0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Embedder(tiny_artifact, threads=1).encode(TEXTS)
        cos = {f.name: np.sum(ref * Embedder(f, threads=1).encode(TEXTS), axis=1).mean() for f in (base, out)}
    assert cos["budget"] > cos["q4_0"]


def test_budget_exactly_the_base_size_and_below_it(tiny_artifact, tmp_path, capsys):
    base = tmp_path / "q4_0"
    assert run_cli("--in", tiny_artifact, "--variant", "q4_0", "--out", base, "-q", "--threads", "1", *RTN) == 0
    size = _model_bytes(base)
    same = tmp_path / "same"
    assert run_cli("--in", tiny_artifact, "--variant", "q4_0", "--budget", str(size), "--out", same, "-q",
                   "--threads", "1", *RTN) == 0
    assert _model_bytes(same) == size and read_manifest(same)["variant"] == "q4_0"
    capsys.readouterr()
    assert run_cli("--in", tiny_artifact, "--variant", "q4_0", "--budget", str(size - 1), "--out", tmp_path / "no",
                   "-q", "--threads", "1", *RTN) == 2
    err = capsys.readouterr().err
    assert f"{size:,}" in err and "larger budget" in err and not (tmp_path / "no").exists()
    for bad, match in ((("--variant", "all"), "one variant"), (("--variant", "w8a8"), "integer path")):
        assert run_cli("--in", tiny_artifact, *bad, "--budget", "1MB", "--out", tmp_path / "x", "-q", *RTN) == 2
        assert match in capsys.readouterr().err
    assert run_cli("--in", tiny_artifact, "--variant", "q4_0", "--budget", "lots", "--out", tmp_path / "y") == 2
    assert "200MB" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_overrides_with_activation_aware_scales_keep_the_layer_exact(tiny_artifact, tmp_path):
    """GPTQ with AWQ: a layer input's scales are folded into its norm, so its 8-bit readers must be quantized
    from scaled weights too. Measured on the tiny model (mean cosine to fp32): plain q4_0 0.9744, with
    v8 and gate8@1-2 0.9844; with the 8-bit readers left unscaled 0.9723, worse than no override."""
    means = {}
    for variant in ("q4_0", "q4_0:v8,gate8@1-2"):
        out = tmp_path / variant.replace(":", "-")
        assert run_cli("--in", tiny_artifact, "--variant", variant, "--out", out, "-q", "--threads", "1",
                       "--accuracy-level", "0") == 0
        q = read_manifest(out)["quantization"]
        assert q["method"] == "gptq" and q["activation_aware_scales"]["groups"] == ["attention", "feed_forward"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = Embedder(tiny_artifact, threads=1).encode(TEXTS)
            means[variant] = float(np.sum(ref * Embedder(out, threads=1).encode(TEXTS), axis=1).mean())
    assert means["q4_0:v8,gate8@1-2"] > means["q4_0"] + 0.005, means


def test_a_saved_sensitivity_measurement_gives_the_same_plan_and_belongs_to_its_model(tiny_artifact, tmp_path,
                                                                                    capsys):
    from quant import sensitivity

    saved = tmp_path / "sens.json"
    assert sensitivity.main(["--in", str(tiny_artifact), "--json", str(saved), "--threads", "1"]) == 0
    data = __import__("json").loads(saved.read_text())
    assert len(data["weights"]) == 4 * 7 and all(v > 0 for v in data["weights"].values())
    budget = str(_model_bytes_of_q4_0(tiny_artifact, tmp_path) + 12_000)
    plans = []
    for extra in ((), ("--sensitivity", str(saved))):
        out = tmp_path / f"b{len(plans)}"
        assert run_cli("--in", tiny_artifact, "--variant", "q4_0", "--budget", budget, *extra, "--out", out, "-q",
                       "--threads", "1", *RTN) == 0
        plans.append(read_manifest(out)["variant"])
    assert plans[0] == plans[1] and ":" in plans[0]
    data["fp32_artifact"] = "0" * 64
    saved.write_text(__import__("json").dumps(data))
    capsys.readouterr()
    assert run_cli("--in", tiny_artifact, "--variant", "q4_0", "--budget", budget, "--sensitivity", saved,
                   "--out", tmp_path / "z", "-q", *RTN) == 2
    assert "another fp32 artifact" in capsys.readouterr().err


def _model_bytes_of_q4_0(tiny_artifact, tmp_path) -> int:
    out = tmp_path / "plain-q4_0"
    if not out.exists():
        assert run_cli("--in", tiny_artifact, "--variant", "q4_0", "--out", out, "-q", "--threads", "1", *RTN) == 0
    return _model_bytes(out)
