/**
 * What the Node tests share: the reference file written by tests/web_reference.py (Python runtime
 * vectors for the same texts and options) and the parity threshold.
 */
import { readFileSync } from "node:fs";

export const REFERENCE_ENV = "EMBEDDINGGEMMA_WEB_REFERENCE";
export const RESULTS_ENV = "EMBEDDINGGEMMA_WEB_RESULTS";
/** A per-text cosine floor replacing each reference's own `min_cosine` (for experiments), or null. */
export const MIN_COSINE_OVERRIDE = process.env.EMBEDDINGGEMMA_WEB_MIN_COSINE ? Number(process.env.EMBEDDINGGEMMA_WEB_MIN_COSINE) : null;

const file = process.env[REFERENCE_ENV];
/** The parsed reference, or null when the environment does not name one. */
export const reference = file ? JSON.parse(readFileSync(file, "utf8")) : null;
/** Why the artifact tests skip, or false when they can run. */
export const skipReason = reference ? false
  : `${REFERENCE_ENV} is not set: run \`bash scripts/test.sh tests/test_web.py\` (it builds the tiny artifact and the reference), ` +
    "or `python tests/web_reference.py OUT.json fp32=ARTIFACT_DIR` and point the variable at OUT.json";

/** Cosine of two numeric arrays. */
export function cos(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / Math.sqrt(na * nb);
}

/** Euclidean norm of a numeric array. */
export function norm(a) {
  let s = 0;
  for (const x of a) s += x * x;
  return Math.sqrt(s);
}
