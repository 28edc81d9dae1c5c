"""fp32 artifact folder -> quantized artifact folder (Q8_0, Q4_0 or a mixed recipe).

Reads the fp32 graph without its weights, memory-maps the external weights, quantizes one tensor at
a time (the 262144 x 768 token table in row chunks), rewrites the consumers to onnxruntime's
``com.microsoft`` block-quantized ops, and writes a self-contained artifact folder atomically.
Needs onnx, onnxruntime, numpy (and tqdm for the progress bar); never torch.
"""
from __future__ import annotations

import logging
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from runtime import __version__
from runtime.artifact import (ArtifactError, OutputExistsError, read_manifest, staged_output,
                              verify_files, write_manifest, update_manifest)

from . import formats as F
from . import graph as G
from . import int8_path as I8
from .recipe import GROUPS, Recipe

log = logging.getLogger("quant")

METHODS = ("rtn", "gptq")
#: Default method (see docs/notes/quant.md for the measurements behind it).
DEFAULT_METHOD = "rtn"
#: MatMulNBits accuracy_level when none is given: "auto" times each built model at levels 0 and 4 on
#: the building CPU and keeps level 4 only if it is clearly faster (``quant.level_probe``; the winner
#: differed between two VNNI CPUs, and level 4 costs accuracy, docs/notes/quant.md). The level is baked
#: into the graph: build on (or for) the target CPU.
DEFAULT_ACCURACY_LEVEL = "auto"
#: Token-table lookup: "gather" (standard ops, float16 scales, 12.6 MB smaller on the real model) or
#: "gbq" (com.microsoft.GatherBlockQuantized, which needs float32 scales for a float32 output).
DEFAULT_EMBEDDING_OP = "gather"
#: (group, bits) whose matmuls run in float32 on weights decoded once at session load instead of as
#: MatMulNBits (``quant.graph.replace_site``). Q8_0 Dense heads: one row per text, so the float32
#: MatMul costs nothing, while MatMulNBits at level 4 rounds the pooled vector to int8 blocks after
#: pooling, where nothing averages it away (more than half of q8_0's error, docs/notes/quant.md), and at
#: level 0 it decodes the whole 8-bit weight on every call. Costs 12-20 MB resident (measured, README).
#: Q4_0 heads stay MatMulNBits: their level costs little (docs/notes/quant.md) and q4_0 is the small variant.
DECODE_AT_LOAD = frozenset({("projection", 8)})

#: GPTQ needs at least this many calibration rows per input dimension (a full-rank Hessian);
#: otherwise the calibrated method only weights the scale search by the Hessian diagonal.
GPTQ_MIN_ROWS_PER_INPUT = 1.0
# Rows of the token table quantized per step: 16384 x 768 float32 is 48 MB of temporaries.
_TABLE_ROWS_PER_CHUNK = 16384
# Texts embedded by the post-build self-check (quantized vs fp32, through runtime.Embedder).
_CHECK_TEXTS = [
    "Which planet is known as the Red Planet?",
    "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
    "def mean(xs): return sum(xs) / len(xs)",
    "La tour Eiffel a été construite pour l'Exposition universelle de 1889 à Paris.",
]
#: Below this self-check cosine the written graph is broken (a layout bug, not quantization noise).
SELF_CHECK_MIN_COSINE = 0.9


class QuantInputError(ValueError):
    """The --in folder is not an fp32 artifact this stage can quantize, or an option is invalid."""


@dataclass
class Fp32Source:
    """A checked fp32 artifact: its folder, manifest, weightless graph and weight sites."""

    folder: Path
    manifest: dict
    data_sha256: str
    sites: list[G.WeightSite] = field(default_factory=list)


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


def tokenizer_files(manifest: dict) -> list[str]:
    """Every tokenizer file the artifact ships: tokenizer.json and, when present, the sentencepiece pair."""
    names = [manifest["tokenizer_file"]]
    sp = manifest.get("sentencepiece") or {}
    names += [sp[key] for key in ("model_file", "added_tokens_file") if sp.get(key)]
    return names


def activation_bits(choice: int | str) -> tuple[int, str]:
    """The integer path's activation code width and why: ``auto`` is 8 on CPUs with int8 dot products
    (VNNI / Arm dotprod), where it is exact, else 7; an explicit 7 or 8 is taken as given."""
    from runtime.cpu import has_int8_dot

    if choice in (None, "auto"):
        dot = has_int8_dot()
        return (8 if dot else 7), f"auto: the building CPU {'has' if dot else 'lacks'} int8 dot products"
    if choice not in I8.ACTIVATION_BITS:
        raise QuantInputError(f"--int8-activation-bits must be 7, 8 or auto, got {choice!r}")
    return int(choice), f"given: {choice}"


def _choose_levels(model_path: Path, recipe: Recipe, vocab: int, threads: int | None) -> tuple[dict[int, int], dict[str, str]]:
    """``--accuracy-level auto`` for one built model: time it at levels 0 and 4 per bit width on this
    CPU (``quant.level_probe``). Also where only the Dense heads use MatMulNBits (w8a8): at one text
    per call, 8-bit heads at level 0 cost w8a8 10 ms of its 22 ms latency on the Xeon."""
    from .level_probe import choose_levels

    levels, notes = choose_levels(model_path, vocab, threads)
    for key, note in notes.items():
        log.info("MatMulNBits accuracy_level for %s %s: %s", recipe.name, key, note)
    return levels, notes


def build_variants(fp32_dir: str | Path, targets: list[tuple[Recipe, str | Path]], *, force: bool = False,
                   method: str = DEFAULT_METHOD, accuracy_level: int | str | None = DEFAULT_ACCURACY_LEVEL,
                   threads: int | None = None,
                   calibration_texts: list[str] | None = None, progress: bool = True, check: bool = True,
                   verify_input: bool = True, embedding_op: str = DEFAULT_EMBEDDING_OP,
                   int8_activation_bits: int | str = "auto") -> list[Path]:
    """Build one artifact folder per ``(recipe, out)`` from the fp32 artifact at ``fp32_dir``.

    Every input and output is checked before any work starts (so a bad --in or an existing --out
    without ``force`` fails in a second). Each folder is written through ``staged_output``: it
    appears complete or not at all. ``method`` is ``rtn`` (ggml round-to-nearest, bit-exact to
    gguf) or ``gptq`` (calibrated error feedback; values still decode exactly as the format says).
    Calibration, when the method needs it, runs once and serves every target. ``embedding_op``
    chooses how the quantized token table is looked up (``quant.graph.replace_site``).
    ``int8_activation_bits`` (integer-path recipes only): 8 where this CPU has int8 dot products,
    else 7 (``auto``), or forced; see ``quant.int8_path.ACTIVATION_BITS``.
    """
    if method not in METHODS:
        raise QuantInputError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    if accuracy_level not in (None, "auto", 0, 1, 2, 3, 4):
        raise QuantInputError(f"--accuracy-level must be 0, 1, 2, 3, 4 or auto (onnxruntime MatMulNBits), "
                              f"got {accuracy_level!r}")
    act_bits = activation_bits(int8_activation_bits)
    if embedding_op not in G.EMBEDDING_OPS:
        raise QuantInputError(f"unknown --embedding-op {embedding_op!r}; choose one of {', '.join(G.EMBEDDING_OPS)}")
    if threads is not None and threads < 1:
        raise QuantInputError(f"--threads must be >= 1, got {threads}")
    outs = [Path(out) for _, out in targets]
    for out in outs:
        if out.exists() and not force:
            raise OutputExistsError(f"output {str(out)!r} already exists; choose another --out or pass --force "
                                    "to replace it")
    if len({o.resolve() for o in outs}) != len(outs):
        raise QuantInputError("two variants would be written to the same folder")
    src = open_fp32_artifact(fp32_dir, verify=verify_input)
    for out in outs:
        if out.resolve() == src.folder.resolve():
            raise QuantInputError(f"--out {str(out)!r} is the --in folder; write the quantized artifact elsewhere")

    hessians = rows = calib_info = absmax = None
    integer = any(recipe.integer for recipe, _ in targets)
    if method == "gptq" or integer:
        # The integer path always calibrates: its smoothing factors come from activation statistics.
        from .calibrate import collect_hessians, load_calibration_texts

        texts = calibration_texts if calibration_texts is not None else load_calibration_texts()
        absmax = {} if integer else None
        hessians, rows, calib_info = collect_hessians(src, texts, threads=threads, progress=progress, absmax=absmax)
        if method != "gptq":
            hessians = rows = None   # round-to-nearest needs only the integer path's max |x|

    quantizer = _Quantizer(src, method, hessians, rows, [recipe for recipe, _ in targets], absmax=absmax,
                           progress=progress)
    del hessians  # the quantizer keeps only what it still needs
    reference = _Reference(src.folder, threads) if check else None
    written = []
    for (recipe, out) in targets:
        t0 = time.time()
        written.append(_build_one(src, recipe, Path(out), force=force, method=method,
                                  accuracy_level=accuracy_level, quantizer=quantizer, calib_info=calib_info,
                                  progress=progress, reference=reference, embedding_op=embedding_op,
                                  act_bits=act_bits, threads=threads))
        log.info("%s written to %s in %.1f s", recipe.name, out, time.time() - t0)
    return written


def build_variant(fp32_dir: str | Path, recipe: Recipe, out: str | Path, **kwargs) -> Path:
    """Build a single quantized artifact folder; keyword arguments as for ``build_variants``."""
    return build_variants(fp32_dir, [(recipe, out)], **kwargs)[0]


def _build_one(src: Fp32Source, recipe: Recipe, out: Path, *, force: bool, method: str,
               accuracy_level: int | str | None, quantizer: "_Quantizer", calib_info, progress: bool, reference,
               embedding_op: str, act_bits: tuple[int, str] = (8, ""), threads: int | None = None) -> Path:
    manifest_in = src.manifest
    auto_level = accuracy_level in (None, "auto")
    # auto: built at level 0, then timed at both levels per bit width (_choose_levels) once written
    level = 0 if auto_level else int(accuracy_level)
    levels, level_notes = {4: level, 8: level}, {"all": f"given: {accuracy_level}"}
    model = onnx.load(str(src.folder / manifest_in["model_file"]), load_external_data=False)
    sites, kept = [], []   # the kept ones are internalized as fp32
    for s in G.find_weight_sites(model):
        (kept if _kept_fp32(recipe, s) else sites).append(s)
    fp32_counts = {g: sum(s.group == g for s in kept) for g in GROUPS}
    names = {s.name for s in sites}
    counts = {g: 0 for g in GROUPS}
    integer_counts = {g: 0 for g in GROUPS}
    group_methods: dict[str, str] = {}
    with staged_output(out, force=force) as stage:
        G.internalize_external_data(model, src.folder, skip=names)
        edits = quantizer.norm_edits(recipe)
        for init in model.graph.initializer:
            if init.name in edits:   # x / s out of the norm, to match the AWQ-scaled weights that read it
                init.CopyFrom(numpy_helper.from_array(
                    (numpy_helper.to_array(init) / edits[init.name]).astype(np.float32), init.name))
        bar = _progress_bar(len(sites), f"quantizing {recipe.name}", progress)
        integer_sites: dict[str, list[G.WeightSite]] = {}
        for site in sites:
            if _on_integer_path(recipe, site):
                integer_sites.setdefault(site.activation, []).append(site)
                continue
            bits = recipe.bits(site.group)
            qw, used = quantizer.get(site, bits)
            G.replace_site(model, site, qw, accuracy_level=level, embedding_op=embedding_op,
                           decode_at_load=(site.group, bits) in DECODE_AT_LOAD)
            del qw
            counts[site.group] += 1
            group_methods[site.group] = used
            bar.update(1)
        for activation, members in integer_sites.items():
            packed, smooth, used, outliers = quantizer.get_integer(activation, members)
            I8.add_integer_path(model, activation, members, packed, smooth, activation_bits=act_bits[0],
                                outliers=outliers)
            for site in members:
                integer_counts[site.group] += 1
                group_methods[site.group] = used
            bar.update(len(members))
        bar.close()
        G.add_contrib_opset(model)
        G.strip_debug_metadata(model)  # exporter debugging info, ~1.5 MB; the fp32 artifact keeps it
        model_file = manifest_in["model_file"]
        log.info("writing %s", stage / model_file)
        G.save_with_external_data(model, stage / model_file)
        opsets = G.opset_imports(model)
        del model
        if auto_level:
            vocab = next(s.n for s in sites + kept if s.group == "embeddings")
            chosen, level_notes = _choose_levels(stage / model_file, recipe, vocab, threads)
            levels.update(chosen)
            if any(chosen.values()):   # only the graph file changes; the weights file serves every level
                from .level_probe import set_level

                graph = onnx.load(str(stage / model_file), load_external_data=False)
                for bits, lv in chosen.items():
                    set_level(graph, lv, bits)
                onnx.save(graph, str(stage / model_file))
                del graph
        for name in tokenizer_files(manifest_in):
            shutil.copy2(src.folder / name, stage / name)

        manifest = _manifest(src, recipe, method, levels, counts, group_methods, opsets, calib_info, embedding_op,
                             integer_counts, fp32_counts)
        awq_groups = sorted({g for g, m in group_methods.items() if m.startswith("awq")})
        if awq_groups:
            alphas = [a for act, a in quantizer.fold.alphas.items()
                      if any(st.activation == act and st.group in awq_groups for st in sites)]
            manifest["quantization"]["activation_aware_scales"] = {
                "groups": awq_groups, "inputs": len(alphas), "norm_weights_divided": len(edits),
                "alpha": {"min": min(alphas), "median": float(np.median(alphas)), "max": max(alphas)},
                "how": "s = rms(x)^alpha per input channel, alpha per input searched on the calibrated output error; "
                       "x / s folded into the preceding RMSNorm weight, v_proj or up_proj columns (quant/awq.py)"}
        manifest["quantization"]["accuracy_level_choice"] = level_notes
        if recipe.integer:
            manifest["quantization"]["int8_path"] = {
                "activation_bits": act_bits[0], "activation_bits_choice": act_bits[1],
                "needs_int8_dot_products": act_bits[0] == 8,
                "why": "8-bit activation codes times 8-bit weights saturate in the u8 x s8 kernel of x86 CPUs "
                       "without VNNI; the runtime refuses such an artifact there"}
        log.info("hashing files and writing the manifest")
        write_manifest(stage, manifest)
        if reference is not None:
            cosines = reference.compare(stage)
            if not np.all(np.isfinite(cosines)) or min(cosines) < SELF_CHECK_MIN_COSINE:
                raise RuntimeError(f"the quantized graph disagrees with fp32 far beyond quantization noise "
                                   f"(cosines {cosines}); this is a bug in the quant stage, please report it")
            update_manifest(stage, quant_check={"texts": len(cosines), "min_cosine_vs_fp32": min(cosines)})
    return out


class _Quantizer:
    """Quantizes weight sites on demand for a list of recipes built in one run.

    Round-to-nearest is cheap and computed each time. The calibrated method is not, so its results
    are shared: GPTQ runs once per layer input on the rows of all weights that read it (q/k/v,
    gate/up: same Hessian, and GPTQ treats rows independently, so this equals running them one by
    one), and a result another recipe of this run will reuse (e.g. the 4-bit table of q4_0 and
    e4_a8_f4_p4) is kept until its last use.
    """

    def __init__(self, src: Fp32Source, method: str, hessians: dict | None, rows: dict | None,
                 recipes: list[Recipe], absmax: dict | None = None, progress: bool = False):
        self.src, self.method = src, method
        self.hessians = hessians or {}
        self.rows = rows or {}
        self.absmax = absmax or {}
        model = onnx.load(str(src.folder / src.manifest["model_file"]), load_external_data=False)
        self._inits = {init.name: init for init in model.graph.initializer if init.name in {s.name for s in src.sites}}
        self._pending: dict[tuple[str, int], int] = {}
        for recipe in recipes:
            for site in src.sites:
                if _kept_fp32(recipe, site):
                    continue
                key = (site.name, INTEGER_KEY if _on_integer_path(recipe, site) else recipe.bits(site.group))
                self._pending[key] = self._pending.get(key, 0) + 1
        self._cache: dict[tuple[str, int], tuple[G.QuantizedWeight, str]] = {}
        self._factors: dict[tuple[str, bool], object] = {}
        # Chained heads (x @ W1 @ W2): the later head is quantized to undo the earlier one's error
        # (``calibrate.chained_head_weights``), from the earlier head's decoded values and input Hessian.
        self._chain_prev: dict[str, G.WeightSite] = {}
        if method == "gptq":
            from .calibrate import _head_chain

            chain = _head_chain(model, src.sites)
            self._chain_prev = {b.name: a for a, b in zip(chain, chain[1:])}
        self._chain_next = {a.name for a in self._chain_prev.values()}
        # (earlier head, bits) -> (its decoded values [K, N], its input Hessian), until the next head uses them
        self._chain_done: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        self.fold = self._plan_folding(model, recipes, progress)

    def _plan_folding(self, model: onnx.ModelProto, recipes: list[Recipe], progress: bool = False):
        """AWQ scales (``quant.awq``) for the 4-bit attention / feed-forward groups of the calibrated method."""
        groups = {g for r in recipes for g in AWQ_GROUPS if _awq_applies(r, g)}
        if self.method != "gptq" or not groups or not self.hessians:
            return None
        from . import awq

        sites = [s for s in self.src.sites if s.group in groups]
        t0 = time.time()
        bar = _progress_bar(len(awq.layer_sites(sites, groups)), "activation-aware scales", progress, unit="layer")
        fold = awq.plan(model, sites, self.hessians, self.rows, self._weight, groups, progress=bar.update)
        bar.close()
        log.info("activation-aware scales for %s searched in %.1f s", ", ".join(sorted(groups)), time.time() - t0)
        return fold

    def folded(self, site: G.WeightSite, bits: int) -> bool:
        """Whether ``site`` at ``bits`` is quantized from AWQ-scaled weights."""
        return self.fold is not None and bits == 4 and (
            site.name in self.fold.row_scales or site.name in self.fold.column_divisors)

    def norm_edits(self, recipe: Recipe) -> dict[str, np.ndarray]:
        """Norm initializers to divide by their AWQ scales in ``recipe``'s graph."""
        if self.fold is None:
            return {}
        return {name: s for name, s in self.fold.norm_divisors.items()
                if _awq_applies(recipe, self.fold.norm_groups[name])}

    def _weight(self, site: G.WeightSite, bits: int | None = None) -> np.ndarray:
        w = G.read_initializer(self._inits[site.name], self.src.folder)
        if bits is not None and self.folded(site, bits):
            w = self.fold.weight(site.name, np.asarray(w, np.float32))
        return w

    def get(self, site: G.WeightSite, bits: int) -> tuple[G.QuantizedWeight, str]:
        """Packed tensors for ``site`` at ``bits`` and the method actually used for them."""
        key = (site.name, bits)
        self._pending[key] -= 1
        if key in self._cache:
            return self._cache[key] if self._pending[key] else self._cache.pop(key)
        if site.op == "Gather":
            # No activations reach a lookup table: the calibrated method uses a plain-MSE scale
            # search, for 4 bits only (at 8 bits it costs a minute and changes almost nothing).
            search = self.method != "rtn" and bits == 4
            data, scales = _quantize_table(self._weight(site), bits, search)
            result = (G.QuantizedWeight(bits, data, scales), "scale_search" if search else "rtn")
        elif (self.method == "gptq" and site.activation in self.hessians
              and self.rows.get(site.activation, 0) < GPTQ_MIN_ROWS_PER_INPUT * site.k):
            # Too few rows for a full-rank Hessian (the Dense heads, when the graph's pooling is not
            # the shape ``calibrate.pooling_states`` knows and they get one pooled row per text):
            # error feedback would fit the calibration texts, so only weight the scale search by
            # the Hessian diagonal.
            from .calibrate import scale_search_quantize

            wt = np.ascontiguousarray(np.asarray(self._weight(site), dtype=np.float32).T)
            q, d = scale_search_quantize(wt, bits, np.diag(self.hessians[site.activation]))
            result = (G.QuantizedWeight(bits, *F.to_matmulnbits(q, d, bits)), "scale_search")
        elif (prev := self._chain_prev.get(site.name)) is not None and (prev.name, bits) in self._chain_done:
            result = self._gptq_chained(site, prev, bits)
        elif self.method == "gptq" and site.activation in self.hessians:
            return self._gptq_group(site, bits)
        else:
            wt = np.ascontiguousarray(np.asarray(self._weight(site), dtype=np.float32).T)  # [N_out, K_in]
            q, d = F.quantizer(bits)(wt)
            result = (G.QuantizedWeight(bits, *F.to_matmulnbits(q, d, bits)), "rtn")
        if self._pending[key] and self.method != "rtn":
            self._cache[key] = result
        return result

    def get_integer(self, activation: str, members: list[G.WeightSite]) -> tuple:
        """Integer-path weights of every site in ``members`` (all reading ``activation``): smoothing
        factors from the calibrated max |x| and the weights, then per-channel int8 codes of the
        smoothed weights (GPTQ on the smoothed Hessian with ``gptq``, round-to-nearest with ``rtn``).
        The ``I8.OUTLIER_CHANNELS`` largest input channels are split (``I8.split_columns``).
        Returns ``({weight name: (codes [K + copies, N] int8, scales [N])}, smoothing factors, method,
        split channel indices)``."""
        from .calibrate import gptq_factor, gptq_quantize_per_channel

        weights = {s.name: np.asarray(self._weight(s), dtype=np.float32) for s in members}
        if activation not in self.absmax:
            raise QuantInputError(f"no calibration statistics for {activation!r}; the integer path needs calibration")
        smooth = I8.smoothing_factors(self.absmax[activation], list(weights.values()))
        outliers = I8.outlier_channels(self.absmax[activation] / smooth)
        cols = I8.split_columns(members[0].k, outliers)
        divisors = I8.input_divisors(smooth, outliers).astype(np.float64)
        use_gptq = self.method == "gptq" and activation in self.hessians
        factor = None
        if use_gptq:
            inv = 1.0 / divisors
            # Hessian of the widened input: the copies of a channel are equal columns
            factor = gptq_factor((self.hessians[activation] * inv[:, None] * inv[None, :])[np.ix_(cols, cols)])
        packed = {}
        for site in members:
            self._pending[(site.name, INTEGER_KEY)] -= 1
            w_t = (weights.pop(site.name) * smooth[:, None])[cols]  # [K + copies, N]: rows scaled by s, copied
            if use_gptq:
                scales = I8.per_channel_scales(w_t, factor.diag)
                codes = gptq_quantize_per_channel(np.ascontiguousarray(w_t.T), factor, scales, I8.WEIGHT_QMAX).T
            else:
                codes, scales = I8.quantize_per_channel(w_t)
            packed[site.name] = (np.ascontiguousarray(codes), scales)
        self._release(activation)
        return packed, smooth, "gptq" if use_gptq else "rtn", outliers

    def _release(self, activation: str) -> None:
        """Free an input's Hessian once no request that needs it is still to be computed."""
        names = {s.name for s in self.src.sites if s.activation == activation}
        if not any(n > 0 and (name, b) not in self._cache for (name, b), n in self._pending.items() if name in names):
            self._factors.pop((activation, False), None)
            self._factors.pop((activation, True), None)
            self.hessians.pop(activation, None)

    def _gptq_group(self, site: G.WeightSite, bits: int) -> tuple[G.QuantizedWeight, str]:
        from .calibrate import DAMP, HEAD_DAMP, gptq_factor, gptq_quantize

        act = site.activation
        folded = self.folded(site, bits)
        key = (act, folded)
        if key not in self._factors:
            h = self.fold.hessian(act, self.hessians[act]) if folded else self.hessians[act]
            self._factors[key] = gptq_factor(h, damp=HEAD_DAMP if site.group == "projection" else DAMP)
        members = [s for s in self.src.sites if s.activation == act and s.op == "MatMul"
                   and (s.name == site.name or self._pending.get((s.name, bits), 0) > 0)]
        # [sum N_out, K_in]: rows of every weight that reads this input, quantized in one pass
        wt = np.concatenate([np.asarray(self._weight(s, bits), dtype=np.float32).T for s in members])
        q, d = gptq_quantize(wt, bits, factor=self._factors[key])
        if site.name in self._chain_next:   # members == [site]: a head reads its own input
            decode = F.dequantizer(bits)
            self._chain_done[(site.name, bits)] = (decode(q, d).reshape(q.shape).T, self.hessians[act])
        start, result = 0, None
        for s in members:
            part = (G.QuantizedWeight(bits, *F.to_matmulnbits(q[start:start + s.n], d[start:start + s.n], bits)),
                    "awq+gptq" if folded else "gptq")
            start += s.n
            if s.name == site.name:
                result = part
            if self._pending.get((s.name, bits), 0) > 0:  # (this request's count is already taken off)
                self._cache[(s.name, bits)] = part
        self._release(act)
        return result

    def _gptq_chained(self, site: G.WeightSite, prev: G.WeightSite, bits: int) -> tuple[G.QuantizedWeight, str]:
        """GPTQ of a head whose input is the previous head's output, from weights corrected for the
        previous head's quantization error (``calibrate.chained_head_weights``)."""
        from .calibrate import HEAD_DAMP, chained_head_weights, gptq_factor, gptq_quantize

        decoded, hessian = self._chain_done.pop((prev.name, bits))
        w2, h = chained_head_weights(self._weight(prev), decoded, self._weight(site), hessian)
        q, d = gptq_quantize(np.ascontiguousarray(w2.T), bits, factor=gptq_factor(h, damp=HEAD_DAMP))
        self._release(site.activation)
        return G.QuantizedWeight(bits, *F.to_matmulnbits(q, d, bits)), "gptq+chain"


#: Groups whose 4-bit weights get activation-aware scales before GPTQ (``quant.awq``).
AWQ_GROUPS = ("attention", "feed_forward")
def _awq_applies(recipe: Recipe, group: str) -> bool:
    """Whether ``recipe`` stores ``group`` as 4-bit blocks that get activation-aware scales."""
    return group in AWQ_GROUPS and recipe.bits(group) == 4 and not recipe.uses_integer_path(group)


#: Key of integer-path requests in the quantizer's bookkeeping (beside bit widths 4 and 8).
INTEGER_KEY = "int8_path"


def _on_integer_path(recipe: Recipe, site: G.WeightSite) -> bool:
    return site.op == "MatMul" and recipe.uses_integer_path(site.group) and I8.is_eligible(site.name)


def _kept_fp32(recipe: Recipe, site: G.WeightSite) -> bool:
    return site.op == "MatMul" and recipe.uses_integer_path(site.group) and I8.keeps_fp32(site.name)


def _quantize_table(table: np.ndarray, bits: int, search: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Quantize the [vocab, hidden] table in row chunks straight into the packed outputs.

    Only one chunk of float32 (read from the memory-mapped fp32 file) and its codes exist at a time
    besides the packed result, instead of several full-size copies of an 805 MB table. ``search``
    picks each block's scale by ``calibrate.search_scales`` instead of ggml's rule.
    """
    vocab, hidden = table.shape
    data = np.empty((vocab, hidden * bits // 8), np.uint8)
    scales = np.empty((vocab, hidden // F.BLOCK_SIZE), np.float32)
    if search:
        from .calibrate import scale_search_quantize as quantize_rows

        quantize = lambda x: quantize_rows(x, bits)  # noqa: E731
    else:
        quantize = F.quantizer(bits)
    for start in range(0, vocab, _TABLE_ROWS_PER_CHUNK):
        stop = min(vocab, start + _TABLE_ROWS_PER_CHUNK)
        q, d = quantize(np.asarray(table[start:stop], dtype=np.float32))
        data[start:stop], scales[start:stop] = F.to_gather_block_quantized(q, d, bits)
    return data, scales


def _manifest(src: Fp32Source, recipe: Recipe, method: str, levels: dict[int, int], counts: dict[str, int],
              group_methods: dict[str, str], opsets: dict[str, int], calib_info: dict | None,
              embedding_op: str, integer_counts: dict[str, int] | None = None,
              fp32_counts: dict[str, int] | None = None) -> dict:
    import onnxruntime

    fp32 = src.manifest
    # export_check describes the fp32 graph against torch; it does not hold for this graph.
    manifest = {k: v for k, v in fp32.items() if k not in ("files", "format", "format_version", "export_check")}
    groups: dict[str, object] = {}
    for group in GROUPS:
        bits = recipe.bits(group)
        decoded = (group, bits) in DECODE_AT_LOAD
        op = (G.DECODED_MATMUL_OP if decoded else G.QUANT_OP[group] if group != "embeddings"
              else G.EMBEDDING_OP_NAMES[embedding_op])
        entry = {"format": recipe.format(group), "bits": bits, "op": op, "tensors": counts[group],
                 "method": group_methods.get(group, method)}
        if op == "MatMulNBits":
            entry["accuracy_level"] = levels[bits]
        else:
            entry["scales_stored_as"] = ("float16" if decoded or embedding_op == "gather"
                                         else "float32 (widened float16)")
        if recipe.uses_integer_path(group):
            entry = {"format": recipe.format(group), "bits": 8,
                     "op": "MatMulIntegerToFloat on per-token codes (QuantizeLinear of rows scaled to [-1, 1])",
                     "weights": "q/k/o_proj" if group == "attention" else "gate/up_proj",
                     "fp32_weights": {"which": "v_proj" if group == "attention" else "down_proj",
                                      "tensors": (fp32_counts or {}).get(group, 0),
                                      "why": "their inputs need ~16-bit activations; the fp32 GEMM is faster "
                                             "than two integer passes (quant/int8_path.py)"},
                     "tensors": (integer_counts or {}).get(group, 0), "method": group_methods.get(group, method),
                     "weight_codes": f"symmetric -{I8.WEIGHT_QMAX}..{I8.WEIGHT_QMAX}, one float32 scale per output channel",
                     "smoothing": {"alpha": I8.SMOOTH_ALPHA, "from": "calibrated per-channel max |x|"},
                     "split_channels": {"per_input": I8.OUTLIER_CHANNELS, "copies": I8.OUTLIER_SPLIT,
                                        "which": "largest calibrated max |x / s|"}}
        groups[group] = entry
    groups["norms"] = "fp32"
    quantization = {"recipe": recipe.recipe, "method": method, "block_size": recipe.block_size, "groups": groups,
                    "other_tensors": "fp32"}
    if calib_info:
        quantization["calibration"] = calib_info
    manifest.update(
        variant=recipe.name,
        quantization=quantization,
        source=dict(fp32.get("source", {}), fp32_artifact=src.data_sha256, fp32_variant=fp32.get("variant")),
        onnx=dict(fp32["onnx"], opset_imports=opsets),
        written_by={"project": "embeddinggemma-onnx", "version": __version__, "stage": "quant",
                    "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    )
    return manifest


class _Reference:
    """fp32 embeddings of the self-check texts, computed once and compared with each staged variant."""

    def __init__(self, fp32_dir: Path, threads: int | None):
        self.threads = threads
        from runtime import Embedder

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tiny test models truncate; expected
            self.ref = Embedder(fp32_dir, verify=False, threads=threads).encode(_CHECK_TEXTS)

    def compare(self, folder: Path) -> list[float]:
        from runtime import Embedder

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = Embedder(folder, verify=False, threads=self.threads).encode(_CHECK_TEXTS)
        return [float(x) for x in np.sum(self.ref * got, axis=1)]


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress_bar(total: int, desc: str, enabled: bool, unit: str = "tensor"):
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit)
