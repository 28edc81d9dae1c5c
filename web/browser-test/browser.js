/**
 * Headless Chromium for tests and benchmarks: Debian's /usr/bin/chromium (or CHROMIUM) driven by
 * playwright-core, never a downloaded browser.
 */
import { existsSync } from "node:fs";
import { chromium } from "playwright-core";

/** Where the browser is, or null. */
export function chromiumPath() {
  const candidates = [process.env.CHROMIUM, "/usr/bin/chromium", "/usr/bin/chromium-browser"].filter(Boolean);
  return candidates.find((p) => existsSync(p)) ?? null;
}

/** Why browser tests cannot run here, or false. */
export function browserSkipReason() {
  return chromiumPath() ? false : "no Chromium at /usr/bin/chromium (or $CHROMIUM): install it with `bash scripts/setup-web.sh --browser`";
}

/** A fresh headless browser (no cache or storage from earlier runs). */
export function launch() {
  // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
  return chromium.launch({ executablePath: chromiumPath(), args: ["--no-sandbox", "--disable-dev-shm-usage"] });
}

/** Open the demo at `url` and wait until its model is ready (or failed); returns the page's state. */
export async function openDemo(context, url, { timeout = 600_000 } = {}) {
  const page = await context.newPage();
  const logs = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state), null, { timeout, polling: 100 });
  const state = await page.evaluate(() => document.body.dataset.state);
  return { page, state, logs };
}
