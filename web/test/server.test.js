// The demo server: cross-origin isolation headers, only manifest-listed files, the corpus, and the
// module loading an artifact over HTTP (the browser's path) with the same vectors.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { gunzipSync } from "node:zlib";
import { ArtifactError, Embedder, urlLoader } from "../src/index.js";
import { startServer } from "../scripts/serve.js";
import { cos, reference, skipReason } from "./helpers.js";

const ref = reference?.artifacts[0];

describe("demo server and loading over HTTP", { skip: skipReason }, () => {
  let server;
  before(async () => {
    server = await startServer({ artifacts: [ref.dir], port: 0 });
  });
  after(() => server?.close());

  test("every response carries COOP/COEP, so the page is cross-origin isolated", async () => {
    for (const p of ["demo/", "artifacts/index.json", `artifacts/${ref.variant}/embedder.json`, "node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm", "nothing-here"]) {
      const res = await fetch(server.url + p);
      assert.equal(res.headers.get("cross-origin-opener-policy"), "same-origin", p);
      assert.equal(res.headers.get("cross-origin-embedder-policy"), "require-corp", p);
    }
  });
  test("the index lists the artifact; only its manifest and listed files are served", async () => {
    const index = await (await fetch(server.url + "artifacts/index.json")).json();
    assert.deepEqual(index.map((a) => a.name), [ref.variant]);
    assert.ok(index[0].downloadBytes > 0);
    assert.equal((await fetch(server.url + `artifacts/${ref.variant}/model.onnx`)).status, 200);
    assert.equal((await fetch(server.url + `artifacts/${ref.variant}/secret.txt`)).status, 404);
    assert.equal((await fetch(server.url + "src/..%2F..%2Fpackage.json")).status, 404);
    assert.equal((await fetch(server.url + "demo/index.html", { method: "POST" })).status, 405);
  });
  test("text files go out gzipped when asked, byte-identical once decoded", async () => {
    const url = server.url + `artifacts/${ref.variant}/tokenizer.json`;
    const plain = new Uint8Array(await (await fetch(url, { headers: { "accept-encoding": "identity" } })).arrayBuffer());
    const { request } = await import("node:http");
    const gz = await new Promise((resolve, reject) => {
      request(url, { headers: { "accept-encoding": "gzip" } }, (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ encoding: res.headers["content-encoding"], body: Buffer.concat(chunks) }));
      }).on("error", reject).end();
    });
    assert.equal(gz.encoding, "gzip");
    assert.deepEqual(new Uint8Array(gunzipSync(gz.body)), plain);
  });
  test("the corpus is the docs cut into passages", async () => {
    const corpus = await (await fetch(server.url + "demo/corpus.json")).json();
    assert.ok(corpus.length > 10);
    assert.ok(corpus.every((p) => p.text && p.source && "section" in p));
  });
  test("the module loads the artifact by URL and gives the Python runtime's vectors", async () => {
    const emb = await Embedder.load(server.url + `artifacts/${ref.variant}/`, { threads: 1 });
    const c = ref.cases[0];
    const out = await emb.encode(c.texts, c.options);
    out.forEach((v, i) => assert.ok(cos(v, c.vectors[i]) >= ref.min_cosine));
    await emb.release();
  });
  test("a URL that is not an artifact folder, or lacks a file, is named", async () => {
    await assert.rejects(Embedder.load(server.url + "demo/"), (e) => e instanceof ArtifactError && /"embedder.json" is missing at .*not an artifact folder/.test(e.message));
    const missing = urlLoader(server.url + `artifacts/${ref.variant}/`);
    await assert.rejects(missing.read("model.onnx.data.old"), /missing at .*serve the whole artifact folder/);
    await assert.rejects(Embedder.load("http://127.0.0.1:9/nothing/"), /could not fetch http:\/\/127.0.0.1:9\/nothing\/embedder.json/);
    await assert.rejects(Embedder.load("http://[bad"), /is not a URL/);
  });
});
