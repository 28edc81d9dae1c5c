/**
 * The demo page: pick a variant, load it in this tab, embed the docs' passages once (cached in
 * IndexedDB), then rank them against each query. `window.demo` exposes the same steps to tests.
 *
 * URL parameters: variant=NAME | url=ARTIFACT_URL, autoload=0|1 (default 1), index=0|1 (embed the
 * corpus after loading, default 1), threads=N, verify=0|1, backend=wasm|webgpu, proxy=0|1
 * (onnxruntime-web in its own worker, default 1: the page stays responsive while it computes),
 * limit=N (index only the first N passages: quick checks on slow machines).
 */
import * as ortWasm from "onnxruntime-web";
import { Embedder } from "/src/index.js";

/** Served by web/scripts/serve.js from node_modules: the page fetches nothing from elsewhere. */
const WASM_PATHS = "/node_modules/onnxruntime-web/dist/";
/** First of these that the server offers is selected (docs/notes/web.md says why this order). */
const PREFERRED = ["w8a8", "w8a8_s4", "q4_0", "e4_a8_f4_p4", "q8_0", "fp32"];
const CORPUS_CHUNK = 8; // passages per encode call: a query waits at most one chunk's run
const TOP_K = 8;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = { embedder: null, corpus: [], vectors: [], indexedFor: null, variants: [] };

const demo = {
  state: "idle",
  embedder: null,
  timings: {},
  ready: null,
  indexed: null,
  load: (options) => loadModel(options),
  /** Embed with the loaded model; vectors come back as plain arrays. Errors also show in the page. */
  embed: async (texts, options) => {
    try {
      const out = await requireEmbedder().encode(texts, options);
      return Array.isArray(out) ? out.map((v) => Array.from(v)) : Array.from(out);
    } catch (error) {
      showError(error);
      throw error;
    }
  },
  search: (query, options) => search(query, options),
  showError: (error) => showError(error),
};
window.demo = demo;

function setState(value) {
  demo.state = value;
  document.body.dataset.state = value;
}

function requireEmbedder() {
  if (!state.embedder) throw new Error("no model is loaded yet; pick a variant and press Load");
  return state.embedder;
}

function showError(error) {
  const box = $("error");
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.hidden = false;
  box.textContent = `${error.name ?? "Error"}: ${error.message ?? error}`;
  console.error(error);
}

function mb(bytes) {
  return `${(bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0)} MB`;
}

function ms(x) {
  return x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${x.toFixed(0)} ms`;
}

async function init() {
  setState("idle");
  const isolated = globalThis.crossOriginIsolated === true;
  $("isolation").innerHTML = isolated
    ? '<span class="ok">cross-origin isolated: wasm threads on</span>'
    : '<span class="bad">not cross-origin isolated: wasm runs on 1 thread (serve with web/scripts/serve.js)</span>';
  $("threads").value = params.get("threads") ?? String(navigator.hardwareConcurrency || 1);
  $("verify").checked = params.get("verify") !== "0";
  if (params.get("backend")) $("backend").value = params.get("backend");
  if (!navigator.gpu) $("backend").querySelector('option[value="webgpu"]').disabled = true;

  try {
    const response = await fetch("/artifacts/index.json");
    state.variants = response.ok ? await response.json() : [];
  } catch {
    state.variants = [];
  }
  const select = $("variant");
  for (const v of state.variants) {
    const option = document.createElement("option");
    option.value = v.name;
    option.textContent = `${v.name} (${mb(v.downloadBytes)})`;
    select.append(option);
  }
  const wanted = params.get("variant") ?? PREFERRED.find((n) => state.variants.some((v) => v.name === n)) ?? state.variants[0]?.name;
  if (wanted) select.value = wanted;
  if (params.get("url")) $("artifact-url").value = params.get("url");

  try {
    state.corpus = await (await fetch("/demo/corpus.json")).json();
  } catch (error) {
    showError(new Error(`could not read the demo corpus (/demo/corpus.json): ${error.message}; serve the page with web/scripts/serve.js`));
  }

  $("load").addEventListener("click", () => loadModel().catch(() => {}));
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    search($("query").value).catch(() => {});
  });
  let timer = null;
  $("query").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => search($("query").value).catch(() => {}), 250);
  });

  if (params.get("autoload") !== "0" && (wanted || params.get("url"))) loadModel().catch(() => {});
}

/** Load the chosen (or given) artifact; resolves to the Embedder. Options override the form. */
async function loadModel(options = {}) {
  const url = options.url ?? ($("artifact-url").value.trim() || state.variants.find((v) => v.name === $("variant").value)?.url);
  const verify = options.verify ?? $("verify").checked;
  const threads = options.threads ?? Number($("threads").value);
  const backend = options.backend ?? $("backend").value;
  const index = options.index ?? params.get("index") !== "0";
  const proxy = options.proxy ?? params.get("proxy") !== "0";
  const limit = options.limit ?? (params.get("limit") ? Number(params.get("limit")) : Infinity);
  showError(null);
  setState("loading");
  $("query").disabled = $("search").disabled = true;
  $("results").replaceChildren();
  $("index-status").textContent = "";
  const bar = $("load-progress");
  bar.hidden = false;
  bar.value = 0;
  const started = performance.now();
  const run = (async () => {
    if (!url) throw new Error("no variant to load: start the server with --artifacts DIR, or type an artifact URL");
    if (state.embedder) {
      await state.embedder.release();
      state.embedder = demo.embedder = null;
    }
    const webgpu = backend === "webgpu";
    const ort = webgpu ? await import("/node_modules/onnxruntime-web/dist/ort.webgpu.min.mjs") : ortWasm;
    $("load-status").textContent = `Loading ${url} ...`;
    const embedder = await Embedder.load(url, {
      verify, threads, ort, wasmPaths: WASM_PATHS, proxy: proxy && !webgpu,
      executionProviders: webgpu ? ["webgpu", "wasm"] : ["wasm"],
      onProgress: ({ phase, loaded, total }) => {
        bar.value = loaded / total;
        $("load-status").textContent = phase === "download" ? `Downloading ${mb(loaded)} of ${mb(total)} ...`
          : phase === "tokenizer" ? "Reading the tokenizer ..." : "Starting onnxruntime ...";
      },
      onTruncate: (report) => console.warn(String(report)),
    });
    state.embedder = demo.embedder = embedder;
    const t = embedder.info.ms;
    demo.timings = { pageReadyMs: performance.now(), loadMs: performance.now() - started, ...t };
    $("load-status").innerHTML = `<b>${embedder.variant}</b> ready in ${ms(demo.timings.loadMs)} ` +
      `(files ${ms(t.files)}${verify ? " incl. sha256" : ""}, tokenizer ${ms(t.tokenizer)}, session ${ms(t.session)}; ` +
      `${mb(embedder.info.downloadBytes)}, ${embedder.info.threads} thread${embedder.info.threads > 1 ? "s" : ""}, ${embedder.info.executionProviders[0]})`;
    fillChoices(embedder);
    $("query").disabled = $("search").disabled = false;
    setState("ready");
    demo.indexed = index ? indexCorpus(embedder, limit) : Promise.resolve(0);
    demo.indexed.catch((error) => showError(error));
    return embedder;
  })();
  demo.ready = run;
  try {
    return await run;
  } catch (error) {
    setState("error");
    $("load-status").textContent = "Loading failed.";
    showError(error);
    throw error;
  } finally {
    bar.hidden = true;
  }
}

function fillChoices(embedder) {
  $("prompt-names").replaceChildren(...Object.keys(embedder.prompts).map((n) => Object.assign(document.createElement("option"), { value: n })));
  $("dims").replaceChildren(...embedder.dims.map((d) => Object.assign(document.createElement("option"), { value: String(d) })));
  $("dim").value = String(embedder.dim);
}

/** Embed the corpus passages (document prompt, section as title), from the IndexedDB cache when it has them. */
async function indexCorpus(embedder, limit = Infinity) {
  const passages = state.corpus.slice(0, limit);
  const key = cacheKey(embedder, passages);
  const cached = await cacheGet(key);
  if (cached && cached.length === passages.length) {
    state.vectors = cached.map((v) => new Float32Array(v));
    state.indexedFor = embedder;
    $("index-status").textContent = `${passages.length} passages indexed (from this browser's cache)`;
    return state.vectors.length;
  }
  state.vectors = [];
  state.indexedFor = embedder;
  const started = performance.now();
  let tokens = 0;
  for (let i = 0; i < passages.length; i += CORPUS_CHUNK) {
    if (state.embedder !== embedder) return state.vectors.length; // another model was loaded meanwhile
    const chunk = passages.slice(i, i + CORPUS_CHUNK);
    const texts = chunk.map((p) => p.text);
    const titles = chunk.map((p) => p.section || null);
    state.vectors.push(...(await embedder.encodeDocument(texts, { titles })));
    tokens += embedder.countTokens(embedder.prompted(texts, { promptName: "document", titles })).reduce((a, b) => a + b, 0);
    const secs = (performance.now() - started) / 1000;
    $("index-status").textContent = `indexed ${state.vectors.length} of ${passages.length} passages (${secs.toFixed(1)} s, ${(tokens / secs).toFixed(0)} tokens/s)`;
  }
  await cachePut(key, state.vectors.map((v) => Array.from(v)));
  return state.vectors.length;
}

/** Rank the indexed passages against `query`; shows and returns [{score, passage}]. */
async function search(query, options = {}) {
  const embedder = requireEmbedder();
  if (!query.trim() && !options.allowEmpty) return [];
  showError(null);
  const promptName = options.promptName ?? ($("prompt-name").value.trim() || null);
  const dimText = options.dim ?? $("dim").value.trim();
  const dim = dimText === "" || dimText == null ? null : /^\d+$/.test(String(dimText)) ? Number(dimText) : dimText;
  try {
    const t0 = performance.now();
    const q = await embedder.encode(query, { promptName, dim });
    const t1 = performance.now();
    const size = q.length;
    const scored = state.vectors.map((v, i) => ({ score: dot(q, unitPrefix(v, size)), passage: state.corpus[i] }));
    scored.sort((a, b) => b.score - a.score);
    const top = scored.slice(0, options.topK ?? TOP_K);
    const t2 = performance.now();
    const tokens = embedder.countTokens(query, { promptName })[0];
    $("query-status").textContent = `query: ${ms(t1 - t0)} to embed (${tokens} tokens, dim ${size}), ${(t2 - t1).toFixed(1)} ms to rank ${scored.length} passages`;
    demo.timings.lastQueryMs = t1 - t0;
    renderResults(top);
    return top;
  } catch (error) {
    showError(error);
    throw error;
  }
}

function renderResults(top) {
  $("results").replaceChildren(...top.map(({ score, passage }) => {
    const li = document.createElement("li");
    const head = document.createElement("div");
    const s = Object.assign(document.createElement("span"), { className: "score", textContent: score.toFixed(3) });
    const where = Object.assign(document.createElement("span"), { className: "where", textContent: `${passage.source} › ${passage.section}` });
    head.append(s, where);
    const text = Object.assign(document.createElement("div"), { className: "passage", textContent: passage.text });
    li.append(head, text);
    return li;
  }));
}

// Matryoshka: the first `size` values of a unit vector, made unit again, equal the model's own `dim` output.
function unitPrefix(v, size) {
  if (size === v.length) return v;
  const out = v.subarray(0, size);
  const norm = Math.sqrt(dot(out, out)) || 1;
  return out.map((x) => x / norm);
}

function dot(a, b) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

function cacheKey(embedder, passages) {
  const files = embedder.manifest.files;
  const weights = Object.keys(files).sort().map((n) => files[n].sha256).join(",");
  return `${hash(weights)}:${hash(JSON.stringify(passages))}`;
}

function hash(text) { // FNV-1a, enough to tell corpus and model versions apart
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return (h >>> 0).toString(16);
}

function openCache() {
  return new Promise((resolve) => {
    if (!globalThis.indexedDB) return resolve(null);
    const request = indexedDB.open("embeddinggemma-demo", 1);
    request.onupgradeneeded = () => request.result.createObjectStore("vectors");
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => resolve(null); // private mode and the like: run without the cache
  });
}

async function cacheGet(key) {
  const db = await openCache();
  if (!db) return null;
  return new Promise((resolve) => {
    const request = db.transaction("vectors").objectStore("vectors").get(key);
    request.onsuccess = () => resolve(request.result ?? null);
    request.onerror = () => resolve(null);
  });
}

async function cachePut(key, value) {
  const db = await openCache();
  if (!db) return;
  await new Promise((resolve) => {
    const tx = db.transaction("vectors", "readwrite");
    tx.objectStore("vectors").put(value, key);
    tx.oncomplete = tx.onerror = () => resolve();
  });
}

init();
