// The demo page in headless Chromium: cross-origin isolated, each artifact of the reference loads
// and embeds the reference texts like the Python runtime, search shows ranked passages, and bad
// input shows a clear error in the page.
import assert from "node:assert/strict";
import { cp, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { startServer } from "../scripts/serve.js";
import { cos, reference, skipReason } from "../test/helpers.js";
import { browserSkipReason, launch, openDemo } from "./browser.js";

const skip = skipReason || browserSkipReason();
const SCREENSHOT = process.env.EMBEDDINGGEMMA_WEB_SCREENSHOT;
const RESULTS = process.env.EMBEDDINGGEMMA_WEB_RESULTS;
/** The reference name whose page also indexes the corpus and searches it (default: the last artifact). */
const SEARCH_WITH = process.env.EMBEDDINGGEMMA_WEB_SEARCH_WITH;
/** Passages the search check indexes: all on the tiny model, a few on the real one (minutes otherwise). */
const CORPUS_LIMIT = Number(process.env.EMBEDDINGGEMMA_WEB_CORPUS_LIMIT ?? Infinity);

describe("demo page in headless Chromium", { skip }, () => {
  let server, browser, tmp;
  const results = {};
  // Each artifact once (a level-0 reference shares the folder of its as-shipped one).
  const dirs = [...new Set(reference?.artifacts.map((a) => a.dir) ?? [])];

  before(async () => {
    tmp = await mkdtemp(path.join(tmpdir(), "web-browser-"));
    // A copy of the smallest artifact with one changed byte: the page must refuse it.
    const altered = path.join(tmp, "altered");
    await cp(dirs[dirs.length - 1], altered, { recursive: true, dereference: true });
    const manifest = JSON.parse(await readFile(path.join(altered, "embedder.json"), "utf8"));
    manifest.variant = "altered";
    await writeFile(path.join(altered, "embedder.json"), JSON.stringify(manifest));
    const tok = path.join(altered, "tokenizer.json");
    await writeFile(tok, (await readFile(tok, "utf8")).replace('"version"', '"Version"'));
    server = await startServer({ artifacts: [...dirs, altered], port: 0 });
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    await server?.close();
    await rm(tmp, { recursive: true, force: true });
    if (RESULTS) await writeFile(RESULTS, JSON.stringify(results, null, 1));
  });

  for (const [i, dir] of dirs.entries()) {
    const refs = reference?.artifacts.filter((a) => a.dir === dir) ?? [];
    test(`${refs[0]?.name ?? dir}: loads isolated with 2 threads and matches the Python runtime`, async () => {
      const name = server.artifacts[i].name; // the server lists artifact folders in the order given
      const context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
      try {
        const { page, state, logs } = await openDemo(context, `${server.url}demo/?variant=${encodeURIComponent(name)}&threads=2&index=0`);
        assert.equal(state, "ready", `the page did not load ${name}:\n${logs.join("\n")}\n${await page.textContent("#error")}`);
        assert.equal(await page.evaluate(() => crossOriginIsolated), true, "the page is not cross-origin isolated");
        assert.equal(await page.evaluate(() => demo.embedder.info.threads), 2);
        const timings = await page.evaluate(() => demo.timings);
        for (const ref of refs) {
          const cosines = [];
          for (const c of ref.cases) {
            const out = await page.evaluate(([texts, options]) => demo.embed(texts, { ...options, onTruncate: () => {} }), [c.texts, c.options]);
            const rows = c.single ? [out] : out;
            rows.forEach((v, j) => {
              const x = cos(v, c.vectors[j]);
              cosines.push(x);
              assert.ok(x >= ref.min_cosine, `${ref.name} / ${c.name} / text ${j}: cosine ${x} < ${ref.min_cosine}`);
            });
          }
          results[ref.name] = { texts: cosines.length, min: Math.min(...cosines), mean: cosines.reduce((a, b) => a + b, 0) / cosines.length, floor: ref.min_cosine, pageReadyMs: timings.pageReadyMs };
          console.log(`browser parity ${ref.name}: ${cosines.length} vectors, min cosine ${results[ref.name].min.toFixed(7)} (floor ${ref.min_cosine}), page ready ${timings.pageReadyMs.toFixed(0)} ms`);
        }
        // search: the corpus indexed in the page, ranked passages with scores and latency shown
        if (SEARCH_WITH ? refs.some((r) => r.name === SEARCH_WITH) : i === dirs.length - 1) {
          await page.evaluate((limit) => demo.load({ index: true, limit }), CORPUS_LIMIT);
          await page.evaluate(() => demo.indexed);
          await page.fill("#query", "which variant should a web page use?");
          await page.press("#query", "Enter");
          await page.waitForFunction(() => document.querySelectorAll("#results li").length > 0);
          const scores = await page.$$eval("#results .score", (els) => els.map((e) => Number(e.textContent)));
          assert.ok(scores.length >= 3 && scores.every((s, k) => k === 0 || s <= scores[k - 1]), `scores not ranked: ${scores}`);
          assert.match(await page.textContent("#query-status"), /query: \d+(\.\d+)? m?s to embed/);
          if (SCREENSHOT) await page.screenshot({ path: SCREENSHOT });
        }
      } finally {
        await context.close();
      }
    });
  }

  test("bad input shows a clear error in the page", async () => {
    const context = await browser.newContext();
    try {
      const { page } = await openDemo(context, `${server.url}demo/?url=${encodeURIComponent("/demo/")}`);
      assert.equal(await page.evaluate(() => document.body.dataset.state), "error");
      assert.match(await page.textContent("#error"), /ArtifactError: artifact file "embedder.json" is missing at .*\/demo\/embedder.json \(HTTP 404\); this URL is not an artifact folder/);

      await page.evaluate(() => demo.load({ url: "/artifacts/altered/" }).catch(() => {}));
      assert.match(await page.textContent("#error"), /ArtifactError: artifact file "tokenizer.json" .* fails its sha256 check/);

      const small = server.artifacts[dirs.length - 1].url;
      await page.evaluate((url) => demo.load({ url, index: false }), small);
      for (const [call, pattern] of [
        [() => demo.embed(42), /TypeError: texts must be a string or an array of strings, got number/],
        [() => demo.embed(["ok", 7]), /TypeError: texts\[1\] is number, expected string/],
        [() => demo.search("red planet", { promptName: "nope" }), /PromptError: unknown prompt name "nope"; this model has: /],
        [() => demo.search("red planet", { dim: 100 }), /RangeError: unsupported dim 100; this model supports /],
      ]) {
        await page.evaluate(call).catch(() => {});
        assert.match(await page.textContent("#error"), pattern);
      }
    } finally {
      await context.close();
    }
  });
});
