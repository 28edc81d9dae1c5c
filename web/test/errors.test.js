// Bad input gets an error that names the problem and the fix: a non-artifact folder, a missing or
// altered file, an unknown prompt or dim, a non-string, a text over the maximum length.
import assert from "node:assert/strict";
import { appendFile, cp, mkdtemp, rm, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { ArtifactError, Embedder, PromptError, TextTooLongError } from "../src/index.js";
import { folderLoader } from "../src/folder-loader.js";
import { reference, skipReason } from "./helpers.js";

const source = reference?.artifacts[0]?.dir;

describe("errors from loading", { skip: skipReason }, () => {
  let tmp;
  before(async () => {
    tmp = await mkdtemp(path.join(tmpdir(), "web-errors-"));
  });
  after(() => rm(tmp, { recursive: true, force: true }));

  const copy = async (name) => {
    const dir = path.join(tmp, name);
    await cp(source, dir, { recursive: true });
    return dir;
  };

  test("a folder without embedder.json is not an artifact", async () => {
    await assert.rejects(Embedder.load(folderLoader(tmp)), (e) => e instanceof ArtifactError && /has no embedder.json; it is not an artifact folder/.test(e.message));
  });
  test("a missing weights file is named", async () => {
    const dir = await copy("missing");
    await rm(path.join(dir, "model.onnx.data"));
    await assert.rejects(Embedder.load(folderLoader(dir)), (e) => e instanceof ArtifactError && e.file === "model.onnx.data" && /missing .*copy the whole folder/.test(e.message));
  });
  test("a truncated file fails the size check even without hashing", async () => {
    const dir = await copy("short");
    await truncate(path.join(dir, "tokenizer.json"), 100);
    await assert.rejects(Embedder.load(folderLoader(dir), { verify: false }), /"tokenizer.json" .* has 100 bytes but the manifest says/);
  });
  test("a changed byte fails the sha256 check, and verify: false skips it", async () => {
    const dir = await copy("altered");
    const file = path.join(dir, "tokenizer.json");
    const { readFile } = await import("node:fs/promises");
    const text = await readFile(file, "utf8");
    await writeFile(file, text.replace('"version"', '"Version"'));
    await assert.rejects(Embedder.load(folderLoader(dir)), (e) => e instanceof ArtifactError && /fails its sha256 check.*verify: false/.test(e.message));
    const emb = await Embedder.load(folderLoader(dir), { verify: false });
    await emb.release();
  });
  test("a manifest that is not JSON or of a future version", async () => {
    const dir = await copy("badmanifest");
    await appendFile(path.join(dir, "embedder.json"), "}}");
    await assert.rejects(Embedder.load(folderLoader(dir)), /embedder.json is not JSON/);
  });
  test("a source that is neither a URL nor a loader", async () => {
    await assert.rejects(Embedder.load(42), (e) => e instanceof TypeError && /source must be an artifact folder URL or a loader, got number/.test(e.message));
  });
});

describe("errors from encoding", { skip: skipReason }, () => {
  let emb;
  before(async () => {
    emb = await Embedder.load(folderLoader(source), { threads: 1, verify: false });
  });
  after(() => emb?.release());

  test("an unknown prompt name lists the model's prompts", async () => {
    await assert.rejects(emb.encode("x", { promptName: "nope" }), (e) => e instanceof PromptError && /unknown prompt name "nope"; this model has: .*query/.test(e.message));
  });
  test("an unknown dim lists the Matryoshka sizes", async () => {
    await assert.rejects(emb.encode("x", { dim: 100 }), (e) => e instanceof RangeError && new RegExp(`unsupported dim 100; this model supports ${emb.dims.join(", ")}`).test(e.message));
    await assert.rejects(emb.encode("x", { dim: String(emb.dims[1]) }), /unsupported dim "\d+"/);
  });
  test("non-strings are named by position", async () => {
    await assert.rejects(emb.encode(42), (e) => e instanceof TypeError && /texts must be a string or an array of strings, got number/.test(e.message));
    await assert.rejects(emb.encode(["ok", null]), /texts\[1\] is null, expected string/);
    await assert.rejects(emb.encode(["ok", { text: "x" }]), /texts\[1\] is Object, expected string/);
    await assert.rejects(emb.encode(["ok"], { titles: [7] }), /titles\[0\] is number/);
  });
  test("a bad batch size", async () => {
    await assert.rejects(emb.encode(["x"], { batchSize: 0 }), /batchSize must be a positive integer/);
  });
  test("over the maximum length: reported by default, an error with truncate: false", async () => {
    const long = "word ".repeat(emb.maxSeqLength + 10);
    const reports = [];
    const out = await emb.encode(["short", long], { onTruncate: (r) => reports.push(r) });
    assert.equal(out.length, 2);
    assert.deepEqual(reports.map((r) => [r.indices, r.total, r.limit]), [[[1], 2, emb.maxSeqLength]]);
    assert.match(reports[0].message, /1 of 2 text\(s\) exceed \d+ tokens and were truncated \(first: texts\[1\]\)/);
    await assert.rejects(emb.encode(["short", long], { truncate: false }), (e) => e instanceof TextTooLongError && e.indices[0] === 1 && /pass truncate: true/.test(e.message));
  });
});
