/**
 * The artifact contract on the web side: read and check `embedder.json` (the same rules as
 * runtime/artifact.py), fetch each listed file with its size checked, and optionally its sha256.
 */
import { ArtifactError } from "./errors.js";

export const MANIFEST_NAME = "embedder.json";
export const FORMAT_NAME = "embeddinggemma-onnx-artifact";
export const SUPPORTED_FORMAT_VERSIONS = [1];
const REQUIRED_KEYS = ["files", "model_file", "embedding", "prompts", "max_seq_length", "onnx"];

/** Parse and check a manifest's bytes (format name and version, required keys); `where` names its source. */
export function parseManifest(bytes, where) {
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (cause) {
    throw new ArtifactError(`${where} is not JSON (${cause.message}): this is not an artifact folder; point at a folder ` +
      "written by `embeddinggemma-export` or `embeddinggemma-quant` (the one holding embedder.json)", { file: MANIFEST_NAME, cause });
  }
  if (manifest === null || typeof manifest !== "object" || Array.isArray(manifest)) {
    throw new ArtifactError(`${where} is not a JSON object: this is not an artifact folder`, { file: MANIFEST_NAME });
  }
  if (manifest.format !== FORMAT_NAME) {
    throw new ArtifactError(`${where} is not an ${FORMAT_NAME} manifest (format=${JSON.stringify(manifest.format)}); ` +
      "point at a folder written by `embeddinggemma-export` or `embeddinggemma-quant`", { file: MANIFEST_NAME });
  }
  if (!SUPPORTED_FORMAT_VERSIONS.includes(manifest.format_version)) {
    throw new ArtifactError(`${where} has format_version ${JSON.stringify(manifest.format_version)}, but this embedder reads only ` +
      `[${SUPPORTED_FORMAT_VERSIONS}]; upgrade the web embedder, or re-export the artifact with this version`, { file: MANIFEST_NAME });
  }
  const missing = REQUIRED_KEYS.filter((k) => !(k in manifest));
  if (missing.length) {
    throw new ArtifactError(`${where} lacks required keys ${JSON.stringify(missing)}; the artifact is incomplete, re-export it`, { file: MANIFEST_NAME });
  }
  return manifest;
}

/**
 * The onnxruntime session config entries the artifact's model needs (`onnx.session_config`, often
 * none; runtime/artifact.py's session_config): for example constant ops that fold only with them.
 */
export function sessionConfig(manifest) {
  const config = manifest.onnx?.session_config === undefined ? {} : manifest.onnx.session_config;
  const ok = config !== null && typeof config === "object" && !Array.isArray(config) &&
    Object.entries(config).every(([k, v]) => typeof k === "string" && typeof v === "string");
  if (!ok) {
    throw new ArtifactError(`the manifest's onnx.session_config must map strings to strings, got ${JSON.stringify(config)}; ` +
      "the artifact is corrupted, rebuild it", { file: MANIFEST_NAME });
  }
  return { ...config };
}

/** The files the browser needs: the graph, its external weight files and tokenizer.json (not tokenizer.model). */
export function webFiles(manifest) {
  const model = manifest.model_file;
  if (!manifest.tokenizer_file && manifest.sentencepiece) {
    throw new ArtifactError("this folder ships only the sentencepiece tokenizer (tokenizer.model), which the browser " +
      "cannot read; build it with embeddinggemma-quant --tokenizer all (or tokenizers)", { file: MANIFEST_NAME });
  }
  const tokenizer = manifest.tokenizer_file ?? "tokenizer.json";
  // External data sits beside the graph under the graph's name plus a suffix (model.onnx.data).
  const externalData = Object.keys(manifest.files).filter((n) => n !== model && (n.startsWith(`${model}.`) || n.endsWith(".data")));
  for (const name of [model, tokenizer]) {
    if (!manifest.files[name]) {
      throw new ArtifactError(`the manifest lists no ${JSON.stringify(name)} in its files; the artifact is incomplete, re-export it`, { file: name });
    }
  }
  return { model, externalData, tokenizer };
}

/** Lowercase hex sha256 of `bytes` with Web Crypto (browsers on secure origins, Node >= 19). */
export async function sha256Hex(bytes) {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) {
    throw new ArtifactError("the sha256 check needs Web Crypto, which browsers offer only on secure origins (https:// or " +
      "localhost); serve the page from one of those, or load with verify: false to skip the check");
  }
  // Web Crypto takes no views of shared memory: hash a private copy (freed right after)
  const shared = typeof SharedArrayBuffer !== "undefined" && bytes.buffer instanceof SharedArrayBuffer;
  const digest = new Uint8Array(await subtle.digest("SHA-256", shared ? bytes.slice() : bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Read one manifest-listed file through `loader`, checking its size (always) and sha256 (when
 * `verify`). `onProgress(loadedBytes)` is called while it streams; `shared` asks the loader for
 * shared memory where it can (the weights, see url-loader.js).
 */
export async function readChecked(loader, manifest, name, { verify = true, onProgress, shared = false } = {}) {
  const entry = manifest.files[name];
  const bytes = await loader.read(name, { size: entry.size, onProgress, shared });
  if (bytes.byteLength !== entry.size) {
    throw new ArtifactError(`artifact file ${JSON.stringify(name)} at ${loader.describe(name)} has ${bytes.byteLength} bytes but ` +
      `the manifest says ${entry.size}: truncated or replaced; re-copy or re-export the artifact`, { file: name });
  }
  if (verify && (await sha256Hex(bytes)) !== entry.sha256) {
    throw new ArtifactError(`artifact file ${JSON.stringify(name)} at ${loader.describe(name)} fails its sha256 check: corrupted or ` +
      "replaced; re-copy or re-export the artifact (or load with verify: false to skip the check at your risk)", { file: name });
  }
  return bytes;
}
