// The module against the Python runtime: every case of tests/web_reference.py, per artifact
// (fp32 and quantized tiny variants in the fast tier), cosine >= MIN_COSINE per text.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { after, describe, test } from "node:test";
import { Embedder } from "../src/index.js";
import { folderLoader } from "../src/folder-loader.js";
import { MIN_COSINE_OVERRIDE, RESULTS_ENV, cos, norm, reference, skipReason } from "./helpers.js";

const results = {};
after(() => {
  if (process.env[RESULTS_ENV] && Object.keys(results).length) writeFileSync(process.env[RESULTS_ENV], JSON.stringify(results, null, 1));
});

for (const ref of reference?.artifacts ?? [{ name: "(no reference)" }]) {
  describe(`parity with the Python runtime: ${ref.name}`, { skip: skipReason }, () => {
    let emb;
    const cosines = [];
    // the floor the reference asks for (tests/web_reference.py says why), unless overridden
    const MIN_COSINE = MIN_COSINE_OVERRIDE ?? ref.min_cosine ?? 0.9999;
    const NORM_TOLERANCE = Math.max(1e-3, 10 * (1 - MIN_COSINE));
    test("loads with the sha256 check and reports what it is", async () => {
      emb = await Embedder.load(folderLoader(ref.dir), { threads: 2 });
      assert.equal(emb.variant, ref.variant);
      assert.deepEqual(emb.dims, ref.dims);
      assert.equal(emb.maxSeqLength, ref.max_seq_length);
      assert.equal(emb.info.threads, 2);
    });

    for (const c of ref.cases ?? []) {
      test(c.name, async () => {
        assert.deepEqual(emb.prompted(c.texts, c.options), c.prompted, "prompted strings differ from Python's");
        const reports = [];
        const out = await emb.encode(c.texts, { ...c.options, onTruncate: (r) => reports.push(r) });
        const rows = c.single ? [out] : out;
        if (c.single) assert.ok(out instanceof Float32Array, "a single string gives one Float32Array");
        assert.equal(rows.length, c.vectors.length);
        rows.forEach((v, i) => {
          assert.equal(v.length, c.vectors[i].length, `text ${i}: dim`);
          const x = cos(v, c.vectors[i]);
          cosines.push(x);
          assert.ok(x >= MIN_COSINE, `text ${i}: cosine ${x} < ${MIN_COSINE}`);
          if (c.options.normalize === false) {
            assert.ok(Math.abs(norm(v) / norm(c.vectors[i]) - 1) < NORM_TOLERANCE, `text ${i}: raw norm ${norm(v)} vs ${norm(c.vectors[i])}`);
          } else {
            assert.ok(Math.abs(norm(v) - 1) < 1e-5, `text ${i}: not unit length`);
          }
        });
        assert.deepEqual(reports.length ? reports[0].indices : [], c.truncated, "truncated texts differ from Python's");
        if (reports.length) assert.equal(reports[0].limit, ref.max_seq_length);
      });
    }

    test("token counts equal the Python runtime's, before and after truncation", () => {
      const t = ref.token_counts;
      assert.deepEqual(emb.countTokens(t.texts, { promptName: t.promptName }), t.truncated);
      assert.deepEqual(emb.countTokens(t.texts, { promptName: t.promptName, truncate: false }), t.full);
    });

    test("an empty list gives an empty list; the same text gives the same vector in any batch", async () => {
      assert.deepEqual(await emb.encode([]), []);
      const [alone] = await emb.encode(["Mars is red."]);
      const mixed = await emb.encode(["a much longer text that pads the batch " + "x ".repeat(10), "Mars is red."]);
      assert.ok(cos(alone, mixed[1]) > 0.99999);
    });

    after(async () => {
      if (cosines.length) {
        results[ref.name] = { texts: cosines.length, min: Math.min(...cosines), mean: cosines.reduce((a, b) => a + b, 0) / cosines.length, floor: MIN_COSINE, note: ref.note };
        console.log(`parity ${ref.name}: ${cosines.length} vectors, min cosine ${results[ref.name].min.toFixed(7)}, mean ${results[ref.name].mean.toFixed(7)}`);
      }
      await emb?.release();
    });
  });
}
