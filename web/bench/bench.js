#!/usr/bin/env node
/**
 * Which variant for the web, measured: per artifact, the Python runtime (native) and then the demo
 * page in a fresh headless Chromium (2 threads, cross-origin isolated), one after the other.
 *
 *   node web/bench/bench.js --artifacts DIR... [--python .venv/bin/python] [--out web/results/bench.json]
 *
 * Per variant: page-ready time (navigation to model ready, files from the local server, sha256 on;
 * the second of two loads, so the server's gzip cache and the OS file cache are warm, the browser's
 * cache is not), one 30-token query p50 (40 runs after 3 warm-ups), short-workload tokens/s (64 texts
 * of ~30 tokens in one call, median of 3), the renderer's peak resident memory, and the same query
 * and workload natively (benchmarks/web_native.py, run before and after the browser and averaged) for
 * the ratios.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { findArtifacts, startServer } from "../scripts/serve.js";
import { launch, openDemo } from "../browser-test/browser.js";

const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const REPO = path.resolve(WEB, "..");
const THREADS = 2;

function parseArgs(argv) {
  const opts = { artifacts: [], python: path.join(REPO, ".venv/bin/python"), out: path.join(WEB, "results/bench.json"), loads: 2 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--artifacts") opts.artifacts.push(argv[++i]);
    else if (a === "--python") opts.python = argv[++i];
    else if (a === "--out") opts.out = argv[++i];
    else if (a === "--loads") opts.loads = Number(argv[++i]);
    else if (a === "--page-params") opts.pageParams = argv[++i]; // e.g. "proxy=0&verify=0"
    else throw new Error(`unknown argument ${a}`);
  }
  if (!opts.artifacts.length) opts.artifacts.push(path.join(REPO, "artifacts"));
  return opts;
}

/** Peak and current resident memory (MB) of the Chromium renderer processes under `browserPid`. */
function rendererMemory(browserPid) {
  const children = new Map();
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const ppid = /PPid:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1];
      children.set(pid, ppid);
    } catch { /* gone */ }
  }
  const under = (pid) => { for (let p = pid; p && p !== "1" && p !== "0"; p = children.get(p)) if (p === String(browserPid)) return true; return false; };
  let peak = 0, rss = 0, total = 0;
  for (const pid of children.keys()) {
    if (!under(pid)) continue;
    try {
      const status = readFileSync(`/proc/${pid}/status`, "utf8");
      const kb = (key) => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
      total += kb("VmRSS");
      if (readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("--type=renderer") && kb("VmHWM") > peak) {
        peak = kb("VmHWM");
        rss = kb("VmRSS");
      }
    } catch { /* gone */ }
  }
  return { rendererPeakMB: peak / 1024, rendererRssMB: rss / 1024, allProcessesRssMB: total / 1024 };
}

async function browserRun(server, name, texts, loads, pageParams = "") {
  let result = null;
  for (let load = 1; load <= loads; load++) {
    const browser = await launch();
    try {
      const context = await browser.newContext();
      const { page, state, logs } = await openDemo(context, `${server.url}demo/?variant=${encodeURIComponent(name)}&threads=${THREADS}&index=0${pageParams ? `&${pageParams}` : ""}`);
      if (state !== "ready") throw new Error(`${name} did not load: ${await page.textContent("#error")}\n${logs.join("\n")}`);
      const timings = await page.evaluate(() => demo.timings);
      if (load < loads) continue; // warm-up load
      const measured = await page.evaluate(async ({ query, short, shortTokens }) => {
        const emb = demo.embedder;
        for (let i = 0; i < 3; i++) await emb.encode(query);
        const times = [];
        for (let i = 0; i < 40; i++) {
          const t = performance.now();
          await emb.encode(query);
          times.push(performance.now() - t);
        }
        await emb.encode(short, { batchSize: 64 });
        const rates = [];
        for (let i = 0; i < 3; i++) {
          const t = performance.now();
          await emb.encode(short, { batchSize: 64 });
          rates.push(shortTokens / ((performance.now() - t) / 1000));
        }
        const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
        return { queryP50Ms: median(times), shortTokensPerS: median(rates), threads: emb.info.threads, isolated: crossOriginIsolated };
      }, { query: texts.query, short: texts.short, shortTokens: texts.short_tokens });
      result = { ...measured, pageReadyMs: timings.pageReadyMs, loadMs: timings.loadMs, filesMs: timings.files, tokenizerMs: timings.tokenizer, sessionMs: timings.session, ...rendererMemory(process.pid) }; // every Chromium process descends from this one
    } finally {
      await browser.close();
    }
  }
  return result;
}

function cpuName() {
  try {
    return /Model name:\s+(.*)/.exec(execFileSync("lscpu", { encoding: "utf8" }))[1].trim();
  } catch {
    return os.cpus()[0]?.model ?? "unknown";
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const artifacts = await findArtifacts(opts.artifacts);
  if (!artifacts.length) throw new Error(`no artifact folders in ${opts.artifacts.join(", ")}`);
  mkdirSync(path.dirname(opts.out), { recursive: true });
  const textsFile = path.join(path.dirname(opts.out), "bench-texts.json");
  const server = await startServer({ artifacts: artifacts.map((a) => a.dir), port: 0 });
  const started = new Date();
  const rows = [];
  try {
    for (const [i, a] of artifacts.entries()) {
      const runNative = (first) => JSON.parse(execFileSync(opts.python, ["-m", "benchmarks.web_native", "--artifact", a.dir, "--texts", textsFile, "--threads", String(THREADS), ...(first ? ["--write-texts"] : [])], { encoding: "utf8", cwd: path.dirname(WEB) }).trim().split("\n").pop());
      // Native before and after the browser, averaged: the machine's speed drifts within minutes.
      const before = runNative(i === 0);
      const texts = JSON.parse(readFileSync(textsFile, "utf8"));
      const web = await browserRun(server, server.artifacts[i].name, texts, opts.loads, opts.pageParams);
      const after = runNative(false);
      const native = { ...after, query_p50_ms: (before.query_p50_ms + after.query_p50_ms) / 2, short_tokens_per_s: (before.short_tokens_per_s + after.short_tokens_per_s) / 2,
        query_p50_ms_runs: [before.query_p50_ms, after.query_p50_ms], short_tokens_per_s_runs: [before.short_tokens_per_s, after.short_tokens_per_s] };
      const info = server.artifacts[i];
      const row = { name: info.name, downloadMB: info.downloadBytes / 1e6, native, web, queryRatio: web.queryP50Ms / native.query_p50_ms, load: os.loadavg()[0] };
      rows.push(row);
      console.error(`${row.name}: ready ${(web.pageReadyMs / 1000).toFixed(2)} s, query ${web.queryP50Ms.toFixed(0)} ms (native ${native.query_p50_ms.toFixed(0)} ms, ${row.queryRatio.toFixed(2)}x), ` +
        `${web.shortTokensPerS.toFixed(0)} tok/s (native ${native.short_tokens_per_s.toFixed(0)}), renderer peak ${web.rendererPeakMB.toFixed(0)} MB, load avg ${row.load.toFixed(2)}`);
    }
  } finally {
    await server.close();
  }
  const texts = JSON.parse(readFileSync(textsFile, "utf8"));
  const result = { pageParams: opts.pageParams ?? "", started: started.toISOString(), cpu: cpuName(), cores: os.cpus().length, chromium: execFileSync("/usr/bin/chromium", ["--version"], { encoding: "utf8" }).trim(), threads: THREADS, queryTokens: texts.query_tokens, shortTexts: texts.short.length, shortTokens: texts.short_tokens, rows };
  writeFileSync(opts.out, JSON.stringify(result, null, 1));
  console.log(table(result));
}

/** The markdown table docs/notes/web.md carries. */
export function table(r) {
  const fp32 = r.rows.find((x) => x.name === "fp32");
  const lines = [
    `${r.cpu}, ${r.cores} cores, ${r.chromium}, ${r.threads} wasm threads (cross-origin isolated), run started ${r.started}`,
    "",
    "| variant | download MB | page ready s | 30-token query p50 ms (native) | browser / native | vs fp32 in browser | short tokens/s (native) | renderer peak MB |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
  ];
  for (const x of r.rows) {
    lines.push(`| ${x.name} | ${x.downloadMB.toFixed(0)} | ${(x.web.pageReadyMs / 1000).toFixed(2)} | ${x.web.queryP50Ms.toFixed(0)} (${x.native.query_p50_ms.toFixed(0)}) | ` +
      `${x.queryRatio.toFixed(2)}x | ${fp32 ? (x.web.queryP50Ms / fp32.web.queryP50Ms).toFixed(2) + "x" : "–"} | ${x.web.shortTokensPerS.toFixed(0)} (${x.native.short_tokens_per_s.toFixed(0)}) | ${x.web.rendererPeakMB.toFixed(0)} |`);
  }
  return lines.join("\n");
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((error) => {
    console.error(`bench.js: ${error.stack ?? error}`);
    process.exit(1);
  });
}
