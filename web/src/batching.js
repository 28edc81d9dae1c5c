/**
 * Length-grouped batches and their padding: the rule of runtime/batching.py, so a text costs the
 * same padding here as in Python.
 */

/** A batch splits where the next text is padded by more than this share of its longest ... */
export const SPLIT_PADDING = 0.1;
/** ... once the batch has this many texts ... */
export const SPLIT_MIN_ROWS = 8;
/** ... or when the next text would be padded by more than this many tokens. */
export const SPLIT_FREE_PADDING = 64;

/**
 * Indices of `lengths` grouped by similar length, longest first, each index once. A batch ends at
 * `maxRows` texts, before its padded size (rows x longest) would pass `maxTokens`, or where the next
 * text is more than `maxPadding` (a share) shorter than the batch's longest, once the batch has
 * `minRows` texts or that text would be padded by more than `freePadding` tokens.
 */
export function lengthBatches(lengths, maxRows, maxTokens, { maxPadding = SPLIT_PADDING, minRows = SPLIT_MIN_ROWS, freePadding = SPLIT_FREE_PADDING } = {}) {
  if (!(maxRows >= 1) || !(maxTokens >= 1)) throw new RangeError(`maxRows and maxTokens must be positive, got ${maxRows} and ${maxTokens}`);
  // Array.prototype.sort is stable, like numpy's kind="stable": equal lengths keep input order.
  const order = lengths.map((_, i) => i).sort((x, y) => lengths[y] - lengths[x]);
  const batches = [];
  let batch = [];
  for (const i of order) {
    // sorted descending, so the first member sets the padded width of the batch
    const width = batch.length ? lengths[batch[0]] : lengths[i];
    if (batch.length && (batch.length === maxRows || (batch.length + 1) * width > maxTokens
        || (lengths[i] < width * (1 - maxPadding) && (batch.length >= minRows || width - lengths[i] > freePadding)))) {
      batches.push(batch);
      batch = [];
    }
    batch.push(i);
  }
  if (batch.length) batches.push(batch);
  return batches;
}

/**
 * `inputIds` and `attentionMask` (BigInt64Array, row-major [rows, width]) for token-id lists of any
 * length: ids padded on the right with `padId`, mask 1 on real tokens and 0 on padding.
 */
export function padBatch(rows, padId) {
  const width = rows.reduce((m, r) => Math.max(m, r.length), 0);
  const inputIds = new BigInt64Array(rows.length * width).fill(BigInt(padId));
  const attentionMask = new BigInt64Array(rows.length * width);
  rows.forEach((r, i) => {
    for (let j = 0; j < r.length; j++) {
      inputIds[i * width + j] = BigInt(r[j]);
      attentionMask[i * width + j] = 1n;
    }
  });
  return { inputIds, attentionMask, shape: [rows.length, width] };
}
