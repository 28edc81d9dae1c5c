"""fp32 artifact folder -> quantized artifact folders (any recipe of ``quant.recipe``).

Reads the fp32 graph without its weights, memory-maps the external weights, quantizes one tensor at
a time (``quant.quantizer``), rewrites the consumers to block-quantized ops (``quant.graph``) or the
integer path (``quant.int8_path``), and writes each self-contained artifact folder atomically with
its manifest (``quant.manifest``), then embeds a few texts with it against fp32 (``quant.self_check``).
Needs onnx, onnxruntime, numpy (and tqdm for progress bars); torch only for ``--method learned`` and ``--method corrected``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from runtime.artifact import write_manifest
from runtime.outputs import refuse_existing, staged_output
from runtime.onnx_helpers import DATA_FILE, add_contrib_opset, internalize_external_data, opset_imports, save_with_external_data
from runtime.progress import progress_bar
from runtime.tokenizer_files import CHOICES as TOKENIZER_CHOICES
from runtime.tokenizer_files import resolve_choice, ship_tokenizer

from . import graph as G
from . import int8_path as I8
from .budget import BudgetPlan, ZeroQuantizer, candidates, plan_budget
from .calibration import ActivationStats, collect_statistics, load_calibration_texts
from .formats import matmulnbits_format
from .manifest import GraphSummary, decoded_at_load, session_config_for, variant_manifest
from .quantizer import CALIBRATED, LAYER_METHODS, METHODS, SiteQuantizer, kept_fp32, on_integer_path, site_format, two_pass_site
from .recipe import Recipe
from .self_check import SelfCheck
from .source import Fp32Source, QuantInputError, open_fp32_artifact
from .targets import Target, check_host_can_build, get_target

log = logging.getLogger("quant")

#: GPTQ (with activation-aware scales for 4-bit attention and feed-forward) is what every measured
#: artifact uses; round-to-nearest stays available and is bit-exact to gguf (docs/quantization.md).
DEFAULT_METHOD = "gptq"
#: MatMulNBits accuracy levels onnxruntime knows; "auto" times the built model on this CPU.
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class BuildOptions:
    """How the variants of one run are built (the command line's options).

    method: ``rtn`` (ggml round-to-nearest, bit-exact to gguf) or ``gptq`` (calibrated; values still
    decode exactly as the format says). target: the device class (``quant.targets``) whose choices
    the artifact bakes in. accuracy_level: MatMulNBits level 0-4 for every bit width, or "auto" to
    time the built model at levels 0 and 4 on this CPU (``quant.level_probe``); None: the target's.
    int8_activation_bits: 7, 8 or "auto" (this CPU's flags; integer-path recipes,
    ``quant.int8_path.ACTIVATION_BITS``); None: the target's. threads: onnxruntime threads for
    calibration, timing and the self-check. check: run the self-check. verify_input: hash the fp32
    artifact's files. calibration_texts: instead of the packaged ones. force: replace outputs.
    tokenizer: which tokenizer files the folders ship (``runtime.tokenizer_files.CHOICES``).
    """

    method: str = DEFAULT_METHOD
    target: str = "host"
    accuracy_level: int | str | None = None
    int8_activation_bits: int | str | None = None
    threads: int | None = None
    progress: bool = True
    check: bool = True
    verify_input: bool = True
    calibration_texts: tuple[str, ...] | None = None
    force: bool = False
    budget: int | None = None
    sensitivity: str | None = None
    tokenizer: str = "all"

    def validate(self) -> None:
        """Raise ``QuantInputError`` naming a bad option and what is allowed."""
        if self.method not in METHODS:
            raise QuantInputError(f"unknown --method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.accuracy_level not in (None, "auto", *ACCURACY_LEVELS):
            raise QuantInputError(f"--accuracy-level must be 0, 1, 2, 3, 4 or auto (onnxruntime MatMulNBits), "
                                  f"got {self.accuracy_level!r}")
        if self.int8_activation_bits not in (None, "auto", *I8.ACTIVATION_BITS):
            raise QuantInputError(f"--int8-activation-bits must be 7, 8 or auto, got {self.int8_activation_bits!r}")
        if self.budget is not None and self.budget < 1:
            raise QuantInputError(f"--budget must be a positive size, got {self.budget}")
        if self.threads is not None and self.threads < 1:
            raise QuantInputError(f"--threads must be >= 1, got {self.threads}")
        if self.tokenizer not in TOKENIZER_CHOICES:
            raise QuantInputError(f"unknown --tokenizer {self.tokenizer!r}; choose one of {', '.join(TOKENIZER_CHOICES)}")
        check_host_can_build(get_target(self.target))

    def levels(self, target: Target) -> tuple[dict[int, int] | None, dict[str, str]]:
        """MatMulNBits level per bit width (None: time them on this CPU) and the manifest's note."""
        if self.accuracy_level == "auto" or (self.accuracy_level is None and target.levels is None):
            return None, {}
        if self.accuracy_level is not None:
            return {4: int(self.accuracy_level), 8: int(self.accuracy_level)}, {"all": f"given: {self.accuracy_level}"}
        return dict(target.levels), {matmulnbits_format(bits).name: f"target {target.name}: {level}"
                                     for bits, level in target.levels.items()}

    def activation_bits(self, target: Target) -> tuple[int, str]:
        """The integer path's activation code width and why: given, the target's, or this CPU's (8 where
        it has int8 dot products, on which 8-bit codes are exact, else 7)."""
        choice = self.int8_activation_bits
        if choice is None and target.activation_bits is not None:
            return target.activation_bits, f"target {target.name}: {target.activation_bits}"
        if choice in (None, "auto"):
            from runtime.cpu import has_int8_dot

            dot = has_int8_dot()
            return (8 if dot else 7), f"auto: the building CPU {'has' if dot else 'lacks'} int8 dot products"
        return int(choice), f"given: {choice}"


def build_variants(fp32_dir: str | Path, targets: list[tuple[Recipe, str | Path]],
                   options: BuildOptions = BuildOptions()) -> list[Path]:
    """Build one artifact folder per ``(recipe, out)`` from the fp32 artifact at ``fp32_dir``.

    Every input and output is checked before any work starts (a bad --in or an existing --out
    without ``force`` fails in a second). Each folder is written through ``staged_output``: it
    appears complete or not at all. Calibration, when the method or the integer path needs it, runs
    once and serves every target.
    """
    options.validate()
    outs = [Path(out) for _, out in targets]
    for out in outs:
        refuse_existing(out, options.force)
    if len({o.resolve() for o in outs}) != len(outs):
        raise QuantInputError("two variants would be written to the same folder")
    src = open_fp32_artifact(fp32_dir, verify=options.verify_input)
    for out in outs:
        if out.resolve() == src.folder.resolve():
            raise QuantInputError(f"--out {str(out)!r} is the --in folder; write the quantized artifact elsewhere")
    try:
        resolve_choice(src.manifest, options.tokenizer)
    except ValueError as exc:
        raise QuantInputError(f"{src.folder}: {exc} (--tokenizer)") from None

    recipes = [recipe for recipe, _ in targets]
    if options.method in LAYER_METHODS:
        _check_layer_method(recipes, options.method)
    started = time.time()
    texts = list(options.calibration_texts) if options.calibration_texts is not None else load_calibration_texts()
    stats = _calibrate(src, recipes, options, texts)
    plan = None
    if options.budget is not None:
        if len(targets) != 1:
            raise QuantInputError("--budget builds one variant; give one base --variant (e.g. q4_0), not 'all'")
        plan = _plan_budget(src, recipes[0], options)
        targets = [(plan.recipe, targets[0][1])]
        recipes = [plan.recipe]
    # the integer path's down_proj in two int8 passes: the target's choice (x86-amx), quant.int8_path.TWO_PASS
    two_pass = get_target(options.target).two_pass and any(r.integer for r in recipes)
    quantizer = SiteQuantizer(src, options.method, stats, recipes, progress=options.progress,
                              texts=texts if options.method in LAYER_METHODS else None,
                              threads=options.threads, two_pass=two_pass)
    check = SelfCheck(src.folder, options.threads) if options.check else None
    written = []
    for recipe, out in targets:
        t0 = time.time()
        written.append(_build_one(src, recipe, Path(out), quantizer, stats, check, options, plan))
        log.info("%s written to %s in %.1f s (%.1f s since the build started)",
                 recipe.name, out, time.time() - t0, time.time() - started)
    return written


def _calibrate(src: Fp32Source, recipes: list[Recipe], options: BuildOptions, texts: list[str]) -> ActivationStats | None:
    """Activation statistics when the method or an integer-path recipe needs them (the integer path
    always calibrates: its smoothing factors come from the activations), else None."""
    integer = any(recipe.integer for recipe in recipes)
    if options.method not in CALIBRATED and not integer:
        return None
    return collect_statistics(src, texts, threads=options.threads, progress=options.progress, with_absmax=integer)


def _check_layer_method(recipes: list[Recipe], method: str) -> None:
    """Refuse what a per-layer method (learned, corrected) cannot build before anything runs."""
    from .layer_calibration import require_torch

    if len(recipes) != 1:
        raise QuantInputError(f"--method {method} builds one variant per run (its layers are computed for that "
                              "recipe's formats); give one --variant")
    if recipes[0].integer:
        raise QuantInputError(f"--method {method} chooses block-format values; {recipes[0].name} uses the integer "
                              "path: build it with --method gptq")
    require_torch(method)


def _plan_budget(src: Fp32Source, base: Recipe, options: BuildOptions) -> BudgetPlan:
    """``quant.budget``'s plan: weights ranked by measured sensitivity, candidate recipes sized by
    writing their graphs with zero codes."""
    from . import sensitivity

    levels = options.levels(get_target(options.target))[0] or {4: 0, 8: 0}

    def write_graph(recipe: Recipe, path: Path) -> None:
        _write_graph(src, recipe, path, ZeroQuantizer(), GraphSummary(levels=dict(levels)), None, False)

    if options.sensitivity:
        cost = sensitivity.load(options.sensitivity, src)
    else:
        sites = candidates(src, base)
        texts = list(options.calibration_texts or load_calibration_texts())[: sensitivity.DEFAULT_TEXTS]
        log.info("measuring what Q4_0 costs at each of %d weights (save it with python -m quant.sensitivity "
                 "and pass --sensitivity to skip this)", len(sites))
        cost = sensitivity.measure(src, sites, texts, options.threads, options.progress)
    return plan_budget(src, base, options.budget, write_graph, cost)


def _build_one(src: Fp32Source, recipe: Recipe, out: Path, quantizer: SiteQuantizer, stats: ActivationStats | None,
               check: SelfCheck | None, options: BuildOptions, plan: BudgetPlan | None = None) -> Path:
    """One variant: graph, accuracy levels, tokenizer files, manifest, self-check; atomically at ``out``."""
    target = get_target(options.target)
    levels, notes = options.levels(target)
    # timed levels: written at level 0, then timed at both levels per bit width once written
    summary = GraphSummary(levels=levels or {4: 0, 8: 0}, level_notes=notes,
                           two_pass_choice=f"target {target.name}" if recipe.integer else "")
    act_bits = options.activation_bits(target) if recipe.integer else None
    with staged_output(out, force=options.force) as stage:
        model_path = stage / src.manifest["model_file"]
        vocab = _write_graph(src, recipe, model_path, quantizer, summary, act_bits, options.progress)
        if levels is None:
            _choose_levels(model_path, recipe, vocab, options.threads, summary)
        manifest = variant_manifest(src, recipe, options.method, summary, stats.info if stats else None)
        manifest = ship_tokenizer(src.folder, manifest, stage, options.tokenizer)
        manifest["target"] = _target_entry(target, summary, act_bits)
        _describe_extras(manifest["quantization"], recipe, quantizer, summary, act_bits)
        if plan is not None:
            written = sum((stage / name).stat().st_size for name in (src.manifest["model_file"], DATA_FILE))
            if written > plan.budget:   # the sizing run wrote the same tensors; this is a bug, not bad input
                raise QuantInputError(f"model files are {written:,} bytes, over the budget of {plan.budget:,}")
            manifest["quantization"]["budget"] = dict(plan.describe(), model_bytes=written)
        log.info("hashing files and writing the manifest")
        write_manifest(stage, manifest)
        if check is not None:
            check.run(stage)
    return out


def _write_graph(src: Fp32Source, recipe: Recipe, model_path: Path, quantizer: SiteQuantizer, summary: GraphSummary,
                 act_bits: tuple[int, str] | None, progress: bool) -> int:
    """Quantize every site of ``recipe`` into the fp32 graph and save it with one weights file;
    records counts, methods and opsets in ``summary``; returns the vocabulary size."""
    model = src.graph()
    two_pass = quantizer.two_pass
    sites, kept = [], []   # the kept ones are internalized as fp32
    for s in G.find_weight_sites(model):
        (kept if kept_fp32(recipe, s, two_pass) else sites).append(s)
    # weights an integer-path group computes in float32, stored so (w8a8) or in blocks decoded at load (a4i)
    in_fp32 = [s for s in sites + kept if s.op == "MatMul" and recipe.uses_integer_path(s.group) and I8.keeps_fp32(s.name)
               and not on_integer_path(recipe, s, two_pass)]
    summary.fp32_counts.update({g: sum(s.group == g for s in in_fp32) for g in summary.fp32_counts})
    internalize_external_data(model, src.folder, skip={s.name for s in sites})
    _divide_norms(model, quantizer.norm_edits(recipe))
    integer_sites: dict[str, list[G.WeightSite]] = {}
    # graphs that re-code blocks at load fold DequantizeLinear (their session config): the shorter decode
    folds_dequantize = bool(session_config_for(recipe))
    with progress_bar(len(sites), f"quantizing {recipe.name}", progress, unit="tensor") as bar:
        for site in sites:
            if on_integer_path(recipe, site, two_pass):
                integer_sites.setdefault(site.activation, []).append(site)
                continue
            fmt = site_format(recipe, site)
            qw, used = quantizer.get(site, fmt)
            # an integer-path group's v_proj / down_proj compute in float32 (``quant.int8_path``)
            at_load = site.op == "MatMul" and (decoded_at_load(site.group, fmt) or recipe.uses_integer_path(site.group))
            G.replace_site(model, site, qw, accuracy_level=summary.levels.get(fmt.bits, 0), decode_at_load=at_load,
                           dequantize_op=folds_dequantize)
            del qw
            summary.counts[site.group] += 1
            summary.methods[site.group] = used
            bar.update(1)
        for activation, members in integer_sites.items():
            twice = {m.name for m in members if two_pass_site(recipe, m, two_pass)}
            packed, smooth, used, outliers, static_max = quantizer.get_integer(
                activation, members, recipe.integer_storage(members[0].group), twice)
            static = recipe.uses_static_form(members[0].group) and not I8.keeps_per_token_codes(members[0].name)
            I8.add_integer_path(model, activation, members, packed, smooth, activation_bits=act_bits[0],
                                outliers=outliers, two_pass=twice, static_max=static_max if static else None)
            for site in members:
                summary.integer_counts[site.group] += 1
                summary.two_pass_counts[site.group] += int(site.name in twice)
                summary.methods[site.group] = used
            bar.update(len(members))
    add_contrib_opset(model)
    G.strip_debug_metadata(model)  # exporter debugging info (~1.5 MB); the fp32 artifact keeps it
    log.info("writing %s", model_path)
    save_with_external_data(model, model_path)
    summary.opsets = opset_imports(model)
    return next(s.n for s in sites + kept if s.group == "embeddings")


def _divide_norms(model: onnx.ModelProto, edits: dict[str, np.ndarray]) -> None:
    """x / s out of each norm whose readers were quantized from AWQ-scaled weights (``quant.awq``)."""
    for init in model.graph.initializer:
        if init.name in edits:
            init.CopyFrom(numpy_helper.from_array(
                (numpy_helper.to_array(init) / edits[init.name]).astype(np.float32), init.name))


def _choose_levels(model_path: Path, recipe: Recipe, vocab: int, threads: int | None, summary: GraphSummary) -> None:
    """``--accuracy-level auto``: time the written model at levels 0 and 4 per bit width on this CPU
    (``quant.level_probe``) and rewrite the graph file at the chosen levels (the weights file serves
    every level)."""
    from .level_probe import choose_levels, set_level

    chosen, summary.level_notes = choose_levels(model_path, vocab, threads, session_config_for(recipe))
    for key, note in summary.level_notes.items():
        log.info("MatMulNBits accuracy_level for %s %s: %s", recipe.name, key, note)
    summary.levels.update(chosen)
    if any(chosen.values()):
        graph = onnx.load(str(model_path), load_external_data=False)
        for bits, lv in chosen.items():
            set_level(graph, lv, bits)
        onnx.save(graph, str(model_path))


def _describe_extras(quantization: dict, recipe: Recipe, quantizer: SiteQuantizer, summary: GraphSummary,
                     act_bits: tuple[int, str] | None) -> None:
    """Manifest entries for the activation-aware scales, the level choice and the integer path."""
    awq_groups = sorted({g for g, m in summary.methods.items() if m.startswith("awq")})
    if awq_groups:
        sites = quantizer.src.sites
        alphas = [a for act, a in quantizer.fold.alphas.items()
                  if any(st.activation == act and st.group in awq_groups for st in sites)]
        quantization["activation_aware_scales"] = {
            "groups": awq_groups, "inputs": len(alphas), "norm_weights_divided": len(quantizer.norm_edits(recipe)),
            "alpha": {"min": min(alphas), "median": float(np.median(alphas)), "max": max(alphas)},
            "how": "s = rms(x)^alpha per input channel, alpha per input searched on the calibrated output error; "
                   "x / s folded into the preceding RMSNorm weight, v_proj or up_proj columns (quant/awq.py)"}
    quantization["accuracy_level_choice"] = summary.level_notes
    quantization.update(quantizer.layer_manifest_entry())
    if act_bits is not None:
        quantization["int8_path"] = {
            "activation_bits": act_bits[0], "activation_bits_choice": act_bits[1],
            "needs_int8_dot_products": act_bits[0] == 8,
            "why": "8-bit activation codes times 8-bit weights saturate in the u8 x s8 kernel of x86 CPUs "
                   "without VNNI; the runtime refuses such an artifact there",
            # down_proj: a float32 MatMul, or two int8 passes (value and rounding residual) where an
            # int8 matrix unit makes those faster (--target x86-amx, quant.int8_path.TWO_PASS)
            "two_pass_weights": sum(summary.two_pass_counts.values()), "two_pass_choice": summary.two_pass_choice}


def _target_entry(target: Target, summary: GraphSummary, act_bits: tuple[int, str] | None) -> dict:
    """The manifest's ``target``: the device class, and for ``host`` the machine it was built on."""
    from runtime.cpu import cpu_name, has_int8_dot, machine_arch

    entry = target.describe()
    if target.arch is None:   # host: the artifact assumes this machine
        entry.update(arch=machine_arch(), cpu=cpu_name())
        if act_bits is not None and act_bits[0] == 8 and has_int8_dot():
            entry["cpu_flags"] = ["avx512_vnni|avx_vnni|amx_int8|asimddp"]
    return entry
