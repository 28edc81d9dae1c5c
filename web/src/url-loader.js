/**
 * Read artifact files over HTTP(S) with `fetch`: a folder URL plus file names. Works in browsers and
 * in Node (http URLs). Bodies stream into one buffer of the manifest's size, so gigabyte weights
 * are not copied twice and progress can be shown.
 */
import { ArtifactError } from "./errors.js";

/** A loader for the artifact folder at `baseUrl` (relative URLs resolve against the page). */
export function urlLoader(baseUrl, { fetch: fetchFn = globalThis.fetch } = {}) {
  const here = globalThis.location?.href;
  let base;
  try {
    base = new URL(String(baseUrl), here);
  } catch (cause) {
    throw new ArtifactError(`${JSON.stringify(String(baseUrl))} is not a URL; give the artifact folder's URL (e.g. "artifacts/q4_0/")`, { cause });
  }
  if (!base.pathname.endsWith("/")) base.pathname += "/"; // a folder: its files resolve inside it
  const describe = (name) => new URL(name, base).href;
  return {
    describe,
    async read(name, { size, onProgress, shared = false } = {}) {
      const url = describe(name);
      let response;
      try {
        response = await fetchFn(url);
      } catch (cause) {
        throw new ArtifactError(`could not fetch ${url} (${cause.message}); is the server running, and does it allow this page to read it?`, { file: name, cause });
      }
      if (response.status === 404) {
        throw new ArtifactError(`artifact file ${JSON.stringify(name)} is missing at ${url} (HTTP 404); ` +
          (name === "embedder.json" ? "this URL is not an artifact folder: point at the folder that holds embedder.json"
            : "serve the whole artifact folder, not single files"), { file: name });
      }
      if (!response.ok) {
        throw new ArtifactError(`fetching ${url} failed with HTTP ${response.status} ${response.statusText}; check the server and the URL`, { file: name });
      }
      return readBody(response, name, url, size, onProgress, shared);
    },
  };
}

async function readBody(response, name, url, size, onProgress, shared) {
  if (size == null || !response.body) return new Uint8Array(await response.arrayBuffer());
  const out = allocate(size, shared);
  const reader = response.body.getReader();
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (loaded + value.byteLength > size) {
      await reader.cancel();
      throw new ArtifactError(`artifact file ${JSON.stringify(name)} at ${url} is longer than the manifest's ${size} bytes: ` +
        "replaced or from another build; re-copy the artifact folder whole", { file: name });
    }
    out.set(value, loaded);
    loaded += value.byteLength;
    onProgress?.(loaded);
  }
  return loaded === size ? out : out.subarray(0, loaded);
}

// With `shared` (the weights) in a cross-origin isolated page the bytes go into a SharedArrayBuffer:
// onnxruntime-web's proxy worker receives external data by structured clone, which shares such
// memory instead of copying hundreds of MB (docs/notes/web.md). Text decoders and Web Crypto take
// no shared views, so other files stay private. Some browsers refuse one plain ArrayBuffer over
// ~1-2 GB; WebAssembly.Memory can still give one (the same fallback onnxruntime-web uses).
function allocate(size, shared) {
  if (shared && globalThis.crossOriginIsolated === true && typeof SharedArrayBuffer !== "undefined") {
    try {
      return new Uint8Array(new SharedArrayBuffer(size));
    } catch (error) {
      if (!(error instanceof RangeError)) throw error;
    }
  }
  try {
    return new Uint8Array(new ArrayBuffer(size));
  } catch (error) {
    if (!(error instanceof RangeError)) throw error;
    const pages = Math.ceil(size / 65536);
    return new Uint8Array(new WebAssembly.Memory({ initial: pages, maximum: pages }).buffer, 0, size);
  }
}
