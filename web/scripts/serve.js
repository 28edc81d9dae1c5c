#!/usr/bin/env node
/**
 * A small static server for the demo page and the artifacts, cross-origin isolated so the wasm
 * backend can use threads (without COOP/COEP, SharedArrayBuffer is missing and onnxruntime-web
 * silently runs on 1 thread).
 *
 *   node web/scripts/serve.js [--artifacts DIR]... [--port 8321] [--host 127.0.0.1] [--notes]
 *
 * DIR is an artifact folder (holding embedder.json) or a folder of them (default: ./artifacts of the
 * repository). Only the manifest and the files it lists are served from an artifact folder.
 */
import { createReadStream } from "node:fs";
import { readFile, readdir, stat } from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import zlib from "node:zlib";
import { buildCorpus } from "./corpus.js";

const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const REPO = path.resolve(WEB, "..");
/** Folders served as they are, by URL prefix; node_modules only where the page imports from. */
const STATIC = {
  "/demo/": path.join(WEB, "demo"),
  "/src/": path.join(WEB, "src"),
  "/node_modules/onnxruntime-web/dist/": path.join(WEB, "node_modules/onnxruntime-web/dist"),
  "/node_modules/@huggingface/tokenizers/dist/": path.join(WEB, "node_modules/@huggingface/tokenizers/dist"),
};
const TYPES = {
  ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8", ".json": "application/json; charset=utf-8", ".wasm": "application/wasm",
  ".png": "image/png", ".svg": "image/svg+xml", ".map": "application/json",
};
/** Worth compressing: tokenizer.json shrinks about 4x, the .wasm files about 4x too. */
const COMPRESSIBLE = new Set([".json", ".js", ".mjs", ".html", ".css", ".wasm", ".svg"]);
const gzip = promisify(zlib.gzip);

/** Every artifact folder in or under each of `dirs`, by unique name: [{name, dir, manifest}]. */
export async function findArtifacts(dirs) {
  const found = [];
  const add = async (dir) => {
    const manifest = JSON.parse(await readFile(path.join(dir, "embedder.json"), "utf8"));
    let name = manifest.variant ?? path.basename(dir);
    if (found.some((a) => a.name === name)) name = `${name}-${found.length}`;
    found.push({ name, dir, manifest });
  };
  for (const dir of dirs) {
    const abs = path.resolve(dir);
    if (await isFile(path.join(abs, "embedder.json"))) {
      await add(abs);
      continue;
    }
    let entries = [];
    try {
      entries = await readdir(abs, { withFileTypes: true });
    } catch {
      throw new Error(`--artifacts ${dir}: no such folder; give an artifact folder (with embedder.json) or a folder of them`);
    }
    for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
      if (e.isDirectory() && (await isFile(path.join(abs, e.name, "embedder.json")))) await add(path.join(abs, e.name));
    }
  }
  return found;
}

/** What the page lists about one artifact (name, URL, sizes, recipe). */
function describeArtifact({ name, manifest }) {
  const m = manifest;
  const tok = m.tokenizer_file ?? "tokenizer.json";
  const webNames = Object.keys(m.files).filter((n) => n === m.model_file || n === tok || n.startsWith(`${m.model_file}.`) || n.endsWith(".data"));
  return {
    name, url: `/artifacts/${encodeURIComponent(name)}/`, variant: m.variant, recipe: m.quantization?.recipe ?? null,
    dims: m.embedding?.matryoshka_dims, maxSeqLength: m.max_seq_length,
    downloadBytes: webNames.reduce((s, n) => s + m.files[n].size, 0),
    modelBytes: webNames.filter((n) => n !== tok).reduce((s, n) => s + m.files[n].size, 0),
  };
}

/**
 * Start the server; resolves to {url, artifacts, close()}. `port` 0 picks a free port (tests).
 * `corpusRoot` is where README.md and docs/ are read for the demo's corpus.
 */
export async function startServer({ artifacts = [], port = 8321, host = "127.0.0.1", corpusRoot = REPO, notes = false } = {}) {
  const found = await findArtifacts(artifacts);
  const index = found.map(describeArtifact);
  const corpus = JSON.stringify(await buildCorpus(corpusRoot, { notes }));
  const gzipCache = new Map();

  const server = http.createServer(async (req, res) => {
    try {
      await handle(req, res);
    } catch (error) {
      if (!res.headersSent) send(res, 500, "text/plain; charset=utf-8", `server error: ${error.message}\n`);
      else res.destroy(error);
    }
  });

  async function handle(req, res) {
    const url = new URL(req.url, "http://localhost");
    const pathname = decodeURIComponent(url.pathname);
    if (req.method !== "GET" && req.method !== "HEAD") return send(res, 405, "text/plain; charset=utf-8", "GET or HEAD only\n");
    if (pathname === "/") return send(res, 302, "text/plain; charset=utf-8", "see /demo/\n", { Location: "/demo/" });
    if (pathname === "/demo/corpus.json") return sendBody(req, res, "application/json; charset=utf-8", corpus, "corpus.json");
    if (pathname === "/artifacts/index.json") return sendBody(req, res, "application/json; charset=utf-8", JSON.stringify(index), "index.json");
    const art = /^\/artifacts\/([^/]+)\/([^/]+)$/.exec(pathname);
    if (art) {
      const entry = found.find((a) => a.name === art[1]);
      const file = art[2];
      if (!entry || (file !== "embedder.json" && !Object.hasOwn(entry.manifest.files, file))) return notFound(res, pathname);
      return sendFile(req, res, path.join(entry.dir, file));
    }
    for (const [prefix, dir] of Object.entries(STATIC)) {
      if (!pathname.startsWith(prefix)) continue;
      const rel = pathname.slice(prefix.length) || "index.html";
      const file = path.resolve(dir, rel);
      if (!file.startsWith(dir + path.sep)) return notFound(res, pathname); // no way out of the folder
      return sendFile(req, res, file);
    }
    return notFound(res, pathname);
  }

  async function sendFile(req, res, file) {
    let info;
    try {
      info = await stat(file);
    } catch {
      return notFound(res, req.url);
    }
    if (!info.isFile()) return notFound(res, req.url);
    const ext = path.extname(file);
    const type = TYPES[ext] ?? "application/octet-stream";
    // Revalidation by size and time: a reload of the page re-uses what the browser cached.
    const gz = COMPRESSIBLE.has(ext) && acceptsGzip(req);
    const etag = `"${info.size.toString(36)}-${Math.floor(info.mtimeMs).toString(36)}${gz ? "-gz" : ""}"`;
    if (req.headers["if-none-match"] === etag) return send(res, 304, type, null, { ETag: etag });
    if (gz) {
      const key = `${file}:${info.mtimeMs}:${info.size}`;
      if (!gzipCache.has(key)) gzipCache.set(key, readFile(file).then((b) => gzip(b, { level: 6 })));
      const body = await gzipCache.get(key);
      return send(res, 200, type, req.method === "HEAD" ? null : body, { "Content-Encoding": "gzip", "Content-Length": body.length, ETag: etag, Vary: "Accept-Encoding" });
    }
    res.writeHead(200, { ...isolationHeaders(), "Content-Type": type, "Content-Length": info.size, ETag: etag });
    if (req.method === "HEAD") return res.end();
    createReadStream(file, { highWaterMark: 1 << 20 }).pipe(res); // 1 MB reads: fewer trips per gigabyte
  }

  async function sendBody(req, res, type, text, key) {
    if (acceptsGzip(req)) {
      if (!gzipCache.has(key)) gzipCache.set(key, gzip(Buffer.from(text)));
      const body = await gzipCache.get(key);
      return send(res, 200, type, req.method === "HEAD" ? null : body, { "Content-Encoding": "gzip", "Content-Length": body.length });
    }
    return send(res, 200, type, req.method === "HEAD" ? null : text);
  }

  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, resolve);
  });
  const address = server.address();
  const shownHost = host.includes(":") ? `[${host}]` : host;
  return {
    url: `http://${shownHost}:${address.port}/`,
    artifacts: index,
    close: () => new Promise((resolve) => { server.closeAllConnections?.(); server.close(() => resolve()); }),
  };
}

/** COOP + COEP make the page cross-origin isolated (SharedArrayBuffer, wasm threads); CORP lets it embed our own files. */
function isolationHeaders() {
  return {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache", // revalidate: a rebuilt artifact must not mix with a cached one
  };
}

function send(res, status, type, body, extra = {}) {
  res.writeHead(status, { ...isolationHeaders(), "Content-Type": type, ...extra });
  res.end(body ?? undefined);
}

function notFound(res, what) {
  send(res, 404, "text/plain; charset=utf-8", `not found: ${what}\n`);
}

function acceptsGzip(req) {
  return /\bgzip\b/.test(req.headers["accept-encoding"] ?? "");
}

async function isFile(p) {
  try {
    return (await stat(p)).isFile();
  } catch {
    return false;
  }
}

function parseArgs(argv) {
  const opts = { artifacts: [], port: 8321, host: "127.0.0.1", notes: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--artifacts") opts.artifacts.push(value());
    else if (a === "--port") opts.port = Number(value());
    else if (a === "--host") opts.host = value();
    else if (a === "--notes") opts.notes = true;
    else if (a === "-h" || a === "--help") {
      console.log("usage: node web/scripts/serve.js [--artifacts DIR]... [--port 8321] [--host 127.0.0.1] [--notes]\n" +
        "DIR: an artifact folder or a folder of them (default: the repository's artifacts/). --notes adds docs/notes/ to the corpus.");
      process.exit(0);
    } else throw new Error(`unknown argument ${a}; see --help`);
  }
  if (!opts.artifacts.length) opts.artifacts.push(path.join(REPO, "artifacts"));
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) throw new Error("--port must be 0-65535");
  return opts;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    const opts = parseArgs(process.argv.slice(2));
    const { url, artifacts } = await startServer(opts);
    if (!artifacts.length) console.error(`warning: no artifact folders found in ${opts.artifacts.join(", ")}; the page can still load one by URL`);
    console.log(`variants: ${artifacts.map((a) => `${a.name} (${(a.downloadBytes / 1e6).toFixed(0)} MB)`).join(", ") || "none"}`);
    console.log(`demo: ${url}demo/   (Ctrl-C stops)`);
  } catch (error) {
    console.error(`serve.js: ${error.message}`);
    process.exit(2);
  }
}
