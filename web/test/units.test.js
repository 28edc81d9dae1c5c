// The pure parts, no model: prompts and titles, vectors, batching (against Python's rule when the
// reference is there), manifest checks.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { ArtifactError, PromptError, finish, lengthBatches, padBatch, parseManifest, sessionConfig, webFiles, withPrompts } from "../src/index.js";
import { reference } from "./helpers.js";

const PROMPTS = { query: "task: search result | query: ", document: "title: none | text: ", STS: "task: sentence similarity | query: " };
const bytes = (obj) => new TextEncoder().encode(typeof obj === "string" ? obj : JSON.stringify(obj));

describe("prompts and titles (runtime/prompts.py's rule)", () => {
  test("a named prompt goes in front of each text", () => {
    assert.deepEqual(withPrompts(["a", "b"], PROMPTS, { promptName: "query" }), ["task: search result | query: a", "task: search result | query: b"]);
  });
  test("titles fill the title slot; a falsy title keeps 'title: none'", () => {
    assert.deepEqual(withPrompts(["x", "y", "z"], PROMPTS, { promptName: "document", titles: ["Mars", null, ""] }),
      ["title: Mars | text: x", "title: none | text: y", "title: none | text: z"]);
  });
  test("titles without a prompt name select the document prompt", () => {
    assert.deepEqual(withPrompts(["x"], PROMPTS, { titles: "T" }), ["title: T | text: x"]);
  });
  test("a title with $ signs is inserted literally", () => {
    assert.deepEqual(withPrompts(["x"], PROMPTS, { titles: ["$& $1"] }), ["title: $& $1 | text: x"]);
  });
  test("no prompt, no default: texts as they are; a literal prompt is prepended", () => {
    assert.deepEqual(withPrompts(["x"], PROMPTS), ["x"]);
    assert.deepEqual(withPrompts(["x"], PROMPTS, { prompt: "p: " }), ["p: x"]);
    assert.deepEqual(withPrompts(["x"], PROMPTS, { defaultPromptName: "STS" }), ["task: sentence similarity | query: x"]);
  });
  test("bad prompt input names the argument and the choices", () => {
    assert.throws(() => withPrompts(["x"], PROMPTS, { promptName: "nope" }), (e) => e instanceof PromptError && e.field === "promptName" && /unknown prompt name "nope"; this model has: STS, document, query/.test(e.message));
    assert.throws(() => withPrompts(["x"], PROMPTS, { promptName: "query", prompt: "p" }), (e) => e instanceof PromptError && e.field === "prompt");
    assert.throws(() => withPrompts(["x"], PROMPTS, { prompt: "p", titles: ["t"] }), (e) => e instanceof PromptError && e.field === "titles");
    assert.throws(() => withPrompts(["x"], PROMPTS, { promptName: "query", titles: ["t"] }), /has no "title: none" slot/);
    assert.throws(() => withPrompts(["x", "y"], PROMPTS, { titles: ["t"] }), /got 1 titles for 2 texts/);
    assert.throws(() => withPrompts(["x"], PROMPTS, { titles: [3] }), (e) => e instanceof TypeError && /titles\[0\] is number/.test(e.message));
    assert.throws(() => withPrompts(["x"], PROMPTS, { prompt: 5 }), TypeError);
  });
});

describe("vectors", () => {
  test("finish keeps the first dim values and makes them unit length", () => {
    const v = finish(new Float32Array([3, 4, 12]), 2);
    assert.deepEqual(Array.from(v), [0.6000000238418579, 0.800000011920929]);
    assert.deepEqual(Array.from(finish(new Float32Array([3, 4, 12]), 2, false)), [3, 4]);
  });
  test("a zero vector stays zero instead of NaN", () => {
    assert.deepEqual(Array.from(finish(new Float32Array(4), 4)), [0, 0, 0, 0]);
  });
});

describe("length batches (runtime/batching.py's rule)", () => {
  test("each index once, longest first, split where padding would be large", () => {
    const batches = lengthBatches([10, 100, 11, 95, 12], 32, 8192);
    assert.deepEqual(batches, [[1, 3], [4, 2, 0]]);
  });
  test("rows and padded tokens are capped", () => {
    assert.deepEqual(lengthBatches([5, 5, 5], 2, 8192), [[0, 1], [2]]);
    assert.deepEqual(lengthBatches([50, 50, 50], 32, 100), [[0, 1], [2]]);
  });
  test("identical to Python's length_batches on the reference cases", { skip: reference ? false : "no reference file" }, () => {
    for (const c of reference.batching) assert.deepEqual(lengthBatches(c.lengths, c.maxRows, c.maxTokens), c.batches);
  });
  test("padding on the right with the pad id, mask on real tokens", () => {
    const { inputIds, attentionMask, shape } = padBatch([[2, 7, 1], [2, 1]], 0);
    assert.deepEqual(shape, [2, 3]);
    assert.deepEqual(Array.from(inputIds, Number), [2, 7, 1, 2, 1, 0]);
    assert.deepEqual(Array.from(attentionMask, Number), [1, 1, 1, 1, 1, 0]);
  });
});

describe("manifest checks", () => {
  const good = { format: "embeddinggemma-onnx-artifact", format_version: 1, files: { "model.onnx": { size: 1, sha256: "" }, "model.onnx.data": { size: 1, sha256: "" }, "tokenizer.json": { size: 1, sha256: "" }, "tokenizer.model": { size: 1, sha256: "" } }, model_file: "model.onnx", tokenizer_file: "tokenizer.json", embedding: {}, prompts: {}, max_seq_length: 8, onnx: {} };
  test("a good manifest parses; the web needs the graph, its external data and tokenizer.json", () => {
    assert.deepEqual(webFiles(parseManifest(bytes(good), "x")), { model: "model.onnx", externalData: ["model.onnx.data"], tokenizer: "tokenizer.json" });
  });
  test("an HTML page, another JSON, a future version or missing keys are named", () => {
    assert.throws(() => parseManifest(bytes("<!doctype html><p>hi"), "u"), (e) => e instanceof ArtifactError && /u is not JSON .*not an artifact folder/.test(e.message));
    assert.throws(() => parseManifest(bytes([1, 2]), "u"), /not a JSON object/);
    assert.throws(() => parseManifest(bytes({ ...good, format: "other" }), "u"), /not an embeddinggemma-onnx-artifact manifest/);
    assert.throws(() => parseManifest(bytes({ ...good, format_version: 9 }), "u"), /format_version 9.*upgrade the web embedder/);
    const { prompts, ...lacking } = good;
    assert.throws(() => parseManifest(bytes(lacking), "u"), /lacks required keys \["prompts"\]/);
    assert.throws(() => webFiles({ ...good, files: {} }), /lists no "model.onnx"/);
  });
  test("the model's session config entries (runtime/artifact.py's session_config): none, given, or refused when not strings", () => {
    assert.deepEqual(sessionConfig(good), {});
    const config = { "session.disable_quant_qdq": "1" };
    assert.deepEqual(sessionConfig({ ...good, onnx: { session_config: config } }), config);
    for (const bad of [["session.disable_quant_qdq"], { "session.disable_quant_qdq": 1 }, null]) {
      assert.throws(() => sessionConfig({ ...good, onnx: { session_config: bad } }),
        (e) => e instanceof ArtifactError && /session_config must map strings to strings.*rebuild it/.test(e.message));
    }
  });
  test("a folder with the sentencepiece tokenizer only is refused with the build option that fixes it", () => {
    const { tokenizer_file, ...spOnly } = { ...good, sentencepiece: { model_file: "tokenizer.model" } };
    assert.throws(() => webFiles(spOnly), (e) => e instanceof ArtifactError && /only the sentencepiece tokenizer.*--tokenizer all/.test(e.message));
  });
});
