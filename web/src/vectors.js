/**
 * The last step of every embedding (Matryoshka size, then unit length) and cosines, as in
 * runtime/vectors.py. Vectors are Float32Arrays.
 */

/** Norms below this count as zero: a zero row stays zero instead of becoming NaN. */
export const NORM_FLOOR = 1e-12;

/** `v` (a Float32Array) scaled to unit L2 norm in place; a zero vector stays zero. Returns `v`. */
export function l2NormalizeInPlace(v) {
  let sum = 0;
  for (let i = 0; i < v.length; i++) sum += v[i] * v[i];
  const norm = Math.max(Math.sqrt(sum), NORM_FLOOR);
  for (let i = 0; i < v.length; i++) v[i] /= norm;
  return v;
}

/**
 * What a caller receives from one full-size model row: a new Float32Array with the first `dim`
 * values (Matryoshka), made unit length when `normalize`.
 */
export function finish(raw, dim, normalize = true) {
  const out = Float32Array.from(raw.subarray(0, dim));
  return normalize ? l2NormalizeInPlace(out) : out;
}

/** Cosine of two vectors of equal length (neither assumed unit length). */
export function cosine(a, b) {
  if (a.length !== b.length) throw new RangeError(`cannot compare embeddings of dim ${a.length} and ${b.length}`);
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / (Math.max(Math.sqrt(na), NORM_FLOOR) * Math.max(Math.sqrt(nb), NORM_FLOOR));
}

/** Cosine of every vector of `a` with every vector of `b` (one vector or an array of them): rows of numbers. */
export function cosineMatrix(a, b) {
  const rows = isVector(a) ? [a] : a;
  const cols = isVector(b) ? [b] : b;
  return rows.map((x) => cols.map((y) => cosine(x, y)));
}

function isVector(x) {
  return ArrayBuffer.isView(x) || (Array.isArray(x) && (x.length === 0 || typeof x[0] === "number"));
}
