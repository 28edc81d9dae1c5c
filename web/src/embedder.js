/**
 * `Embedder`: load one artifact (a URL or a loader) and turn texts into EmbeddingGemma vectors in a
 * browser or in Node, with onnxruntime-web (wasm) and @huggingface/tokenizers. The same contract as
 * Python's `runtime.Embedder`, driven by the artifact's embedder.json.
 */
import * as defaultOrt from "onnxruntime-web";
import { MANIFEST_NAME, parseManifest, readChecked, sessionConfig, webFiles } from "./artifact.js";
import { lengthBatches, padBatch } from "./batching.js";
import { ArtifactError, TextTooLongError, TruncationReport } from "./errors.js";
import { typeName, withPrompts } from "./prompts.js";
import { TextTokenizer } from "./tokenizer.js";
import { urlLoader } from "./url-loader.js";
import { cosineMatrix, finish } from "./vectors.js";

export class Embedder {
  /**
   * Load the artifact at `source`: a folder URL (string or URL) or a loader (`urlLoader`,
   * `folderLoader`, or any `{describe(name), read(name, {size, onProgress, shared})}`).
   *
   * Options: verify (sha256 of every file with Web Crypto, default true; sizes are always checked),
   * threads (wasm threads, default all cores; needs a cross-origin isolated page, else 1),
   * executionProviders (default ["wasm"]; ["webgpu", "wasm"] with the webgpu build passed as `ort`),
   * maxBatchTokens (padded tokens per run, default 8192), onProgress({file, loaded, total, phase}),
   * onTruncate(report) (default console.warn), wasmPaths (where onnxruntime-web's .wasm files are
   * served), proxy (run onnxruntime-web in its own worker, so the page stays responsive and the
   * tokenizer is built while the session starts; browsers only), ort (an onnxruntime-web namespace to
   * use instead of the default import), sessionOptions (extra onnxruntime session options; the
   * artifact's own onnx.session_config entries are added to its `extra`).
   */
  static async load(source, options = {}) {
    const {
      verify = true, threads = defaultThreads(), executionProviders = ["wasm"], maxBatchTokens = 8192,
      onProgress, onTruncate, wasmPaths, proxy = false, ort = defaultOrt, sessionOptions = {},
    } = options;
    const loader = toLoader(source);
    const t0 = now();
    const manifestBytes = await loader.read(MANIFEST_NAME);
    const manifest = parseManifest(manifestBytes, loader.describe(MANIFEST_NAME));
    const config = sessionConfig(manifest);
    const files = webFiles(manifest);
    const maxSeqLength = Number(manifest.max_seq_length);
    if (!(maxBatchTokens >= maxSeqLength)) {
      throw new RangeError(`maxBatchTokens=${maxBatchTokens} must be at least the model's maximum length ${maxSeqLength}`);
    }

    const total = [files.model, ...files.externalData, files.tokenizer].reduce((s, n) => s + manifest.files[n].size, 0);
    const loadedBy = new Map();
    const read = (name, shared = false) => readChecked(loader, manifest, name, {
      verify, shared,
      onProgress: (loaded) => {
        loadedBy.set(name, loaded);
        onProgress?.({ phase: "download", file: name, loaded: sum(loadedBy.values()), total });
      },
    });
    // All downloads start at once. The session starts as soon as the weights are in; the tokenizer
    // is built only then, because building it takes the page's thread for about a second, and the
    // loop that streams the weights runs on that thread too (with `proxy` the session starts in its
    // worker while the tokenizer is built here).
    let tFetched = null;
    configureWasm(ort, { threads, wasmPaths, proxy });
    const runtimeReady = startRuntime(ort, executionProviders);
    const weights = Promise.all([read(files.model), Promise.all(files.externalData.map((name) => read(name, true)))]);
    const tokenizerBytes = read(files.tokenizer);
    const session = weights.then(async ([model, data]) => {
      tFetched = now();
      await runtimeReady;
      onProgress?.({ phase: "session", file: files.model, loaded: total, total });
      try {
        const created = await ort.InferenceSession.create(model, {
          executionProviders,
          graphOptimizationLevel: "all",
          // As Python's low_memory default: no arena or memory patterns growing with each batch shape.
          enableCpuMemArena: false,
          enableMemPattern: false,
          ...sessionOptions,
          // the artifact's own session config entries (what its constant ops need to fold at load)
          extra: { ...config, ...sessionOptions?.extra },
          externalData: files.externalData.map((path, i) => ({ path, data: data[i] })),
        });
        return { session: created, ms: now() - tFetched };
      } catch (cause) {
        throw new ArtifactError(`onnxruntime-web could not load ${loader.describe(files.model)}: ${cause?.message ?? cause}`, { file: files.model, cause });
      }
    });
    const tokenizer = Promise.all([tokenizerBytes, weights]).then(async ([bytes]) => {
      await yieldToEventLoop(); // let the session's first steps (a message to the proxy worker) go out
      onProgress?.({ phase: "tokenizer", file: files.tokenizer, loaded: total, total });
      const t = now();
      const tok = new TextTokenizer(JSON.parse(new TextDecoder().decode(bytes)), maxSeqLength);
      return { tok, ms: now() - t };
    });
    const [tokenized, created] = await Promise.allSettled([tokenizer, session]);
    if (tokenized.status === "rejected" || created.status === "rejected") {
      if (created.status === "fulfilled") await created.value.session.release(); // do not leak wasm memory
      throw tokenized.status === "rejected" ? tokenized.reason : created.reason;
    }
    const tReady = now();
    return new Embedder({
      manifest, session: created.value.session, tokenizer: tokenized.value.tok, ort, maxBatchTokens, onTruncate, source: loader.describe(""),
      info: {
        threads: effectiveThreads(ort), executionProviders, verify, proxy, downloadBytes: total,
        ms: { files: tFetched - t0, tokenizer: tokenized.value.ms, session: created.value.ms, total: tReady - t0 },
      },
    });
  }

  /** Use `Embedder.load`; the constructor takes already-loaded parts. */
  constructor({ manifest, session, tokenizer, ort, maxBatchTokens, onTruncate, source, info }) {
    this.manifest = manifest;
    this.source = source;
    this.dim = Number(manifest.embedding.dim);
    this.dims = manifest.embedding.matryoshka_dims.map(Number);
    this.maxSeqLength = Number(manifest.max_seq_length);
    this.prompts = { ...manifest.prompts };
    this.defaultPromptName = manifest.default_prompt_name ?? null;
    this.variant = manifest.variant ?? "unknown";
    this.maxBatchTokens = maxBatchTokens;
    this.info = info;
    this._session = session;
    this._tokenizer = tokenizer;
    this._ort = ort;
    this._padId = Number(manifest.pad_token_id ?? 0);
    this._outputName = manifest.onnx.outputs[0].name;
    this._onTruncate = onTruncate ?? ((report) => console.warn(String(report)));
    this._queue = Promise.resolve(); // one onnxruntime run at a time: a wasm session is not re-entrant
  }

  /**
   * Embed one text (-> Float32Array) or an array of texts (-> array of Float32Array, input order).
   * Options: promptName (see `this.prompts`) or prompt (literal prefix), titles (one per text, or
   * null: fill the document prompt's title slot), dim (a Matryoshka size, see `this.dims`),
   * normalize (unit length, default true), batchSize (default 32), truncate (default true: texts over
   * `maxSeqLength` tokens are cut and reported to onTruncate; false: TextTooLongError).
   */
  async encode(texts, { promptName = null, prompt = null, titles = null, dim = null, normalize = true, batchSize = 32, truncate = true, onTruncate } = {}) {
    const single = typeof texts === "string";
    const prefixed = this.prompted(texts, { promptName, prompt, titles });
    const size = dim == null ? this.dim : dim;
    if (!this.dims.includes(size)) throw new RangeError(`unsupported dim ${JSON.stringify(size)}; this model supports ${this.dims.join(", ")}`);
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new RangeError(`batchSize must be a positive integer, got ${JSON.stringify(batchSize)}`);
    if (!prefixed.length) return [];

    const { ids, cut } = this._tokenizer.encodeBatch(prefixed);
    if (cut.length) {
      const limit = this.maxSeqLength;
      if (!truncate) {
        throw new TextTooLongError(`${cut.length} text(s) exceed ${limit} tokens (first: texts[${cut[0]}]); shorten them or pass truncate: true`, { indices: cut, limit });
      }
      (onTruncate ?? this._onTruncate)(new TruncationReport(`${cut.length} of ${prefixed.length} text(s) exceed ${limit} tokens and were ` +
        `truncated (first: texts[${cut[0]}]); pass truncate: false to get an error instead`, { indices: cut, total: prefixed.length, limit }));
    }

    const out = new Array(prefixed.length);
    for (const idx of lengthBatches(ids.map((r) => r.length), batchSize, this.maxBatchTokens)) {
      const raw = await this._run(idx.map((i) => ids[i]));
      idx.forEach((textIndex, row) => {
        out[textIndex] = finish(raw.subarray(row * this.dim, (row + 1) * this.dim), size, normalize);
      });
    }
    return single ? out[0] : out;
  }

  /** Embed search queries with the model's `query` prompt. */
  encodeQuery(texts, options = {}) {
    return this.encode(texts, { ...options, promptName: "query" });
  }

  /** Embed documents with the model's `document` prompt, `title: {title or none} | text: `. */
  encodeDocument(texts, { titles = null, ...options } = {}) {
    return this.encode(texts, { ...options, promptName: "document", titles });
  }

  /** The exact strings the model reads for `texts`: each with its prompt (and title) in front. */
  prompted(texts, { promptName = null, prompt = null, titles = null } = {}) {
    return withPrompts(checkTexts(texts), this.prompts, { promptName, prompt, titles, defaultPromptName: this.defaultPromptName });
  }

  /** Token counts (prompt, BOS and EOS included); `truncate: false` gives the lengths before truncation. */
  countTokens(texts, { promptName = null, prompt = null, truncate = true } = {}) {
    const prefixed = this.prompted(texts, { promptName, prompt });
    if (!truncate) return this._tokenizer.fullLengths(prefixed);
    return this._tokenizer.encodeBatch(prefixed).ids.map((r) => r.length);
  }

  /** Cosine similarity rows [a.length][b.length] between vectors (one or an array of them). */
  static similarity(a, b) {
    return cosineMatrix(a, b);
  }

  /** Free the onnxruntime session (its wasm memory). The embedder cannot be used afterwards. */
  async release() {
    await this._queue;
    await this._session.release();
  }

  _run(rows) {
    const { inputIds, attentionMask, shape } = padBatch(rows, this._padId);
    const run = async () => {
      const feeds = {
        input_ids: new this._ort.Tensor("int64", inputIds, shape),
        attention_mask: new this._ort.Tensor("int64", attentionMask, shape),
      };
      const result = await this._session.run(feeds, [this._outputName]);
      const tensor = result[this._outputName];
      const data = tensor.data;
      tensor.dispose?.();
      return data;
    };
    const next = this._queue.then(run, run);
    this._queue = next.then(() => undefined, () => undefined);
    return next;
  }
}

function toLoader(source) {
  if (source && typeof source === "object" && typeof source.read === "function") return source;
  if (typeof source === "string" || source instanceof URL) return urlLoader(source);
  throw new TypeError(`source must be an artifact folder URL or a loader, got ${typeName(source)}`);
}

function checkTexts(texts) {
  if (typeof texts === "string") return [texts];
  if (!Array.isArray(texts)) throw new TypeError(`texts must be a string or an array of strings, got ${typeName(texts)}`);
  texts.forEach((t, i) => {
    if (typeof t !== "string") throw new TypeError(`texts[${i}] is ${typeName(t)}, expected string`);
  });
  return texts;
}

function configureWasm(ort, { threads, wasmPaths, proxy }) {
  if (!Number.isInteger(threads) || threads < 1) throw new RangeError(`threads must be a positive integer, got ${JSON.stringify(threads)}`);
  // onnxruntime-web reads these once, when its first session starts; later changes are ignored.
  ort.env.wasm.numThreads = threads;
  if (wasmPaths !== undefined) ort.env.wasm.wasmPaths = wasmPaths;
  if (proxy) ort.env.wasm.proxy = true;
}

/** Threads the wasm backend really runs: 1 without SharedArrayBuffer (a page not cross-origin isolated). */
function effectiveThreads(ort) {
  const isolated = typeof SharedArrayBuffer !== "undefined" && globalThis.crossOriginIsolated !== false;
  return isolated ? ort.env.wasm.numThreads : 1;
}

function defaultThreads() {
  return Math.max(1, globalThis.navigator?.hardwareConcurrency ?? 1);
}

/** An ONNX graph of one Identity node (67 bytes, from onnx.helper): loading it starts onnxruntime-web. */
const IDENTITY_MODEL = "CAgSADo3ChAKAXgSAXkiCElkZW50aXR5EgF3Wg8KAXgSCgoICAESBAoCCAFiDwoBeRIKCggIARIECgIIAUIECgAQEQ==";

/**
 * Start onnxruntime-web (fetch and compile its wasm, start its threads and, with `proxy`, its worker)
 * by loading a one-node graph, so that happens while the artifact downloads instead of after it.
 * Resolves when it is done; a failure here resurfaces, with its reason, when the real model loads.
 */
function startRuntime(ort, executionProviders) {
  const bytes = Uint8Array.from(atob(IDENTITY_MODEL), (c) => c.charCodeAt(0));
  return ort.InferenceSession.create(bytes, { executionProviders })
    .then((s) => s.release(), () => undefined);
}

/** Resolve after pending tasks (worker messages, timers) had their turn. */
function yieldToEventLoop() {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

function now() {
  return globalThis.performance?.now() ?? Date.now();
}

function sum(values) {
  let s = 0;
  for (const v of values) s += v;
  return s;
}
