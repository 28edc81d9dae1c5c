/**
 * The errors the web embedder throws. Each message names the problem and the fix; the extra fields
 * let a caller (the demo page, a test) act on them without parsing text. Mirrors runtime/ in Python.
 */

/** An artifact URL or folder is missing, not an artifact, corrupted, or of an unknown format. */
export class ArtifactError extends Error {
  constructor(message, { file = null, cause } = {}) {
    super(message, cause ? { cause } : undefined);
    this.name = "ArtifactError";
    this.file = file;
  }
}

/** A prompt name, literal prompt or title list this model cannot use; `field` names the argument. */
export class PromptError extends Error {
  constructor(message, field) {
    super(message);
    this.name = "PromptError";
    this.field = field;
  }
}

/** Texts exceed the maximum length and `truncate: false` was asked for (`indices`, `limit`). */
export class TextTooLongError extends Error {
  constructor(message, { indices = [], limit = 0 } = {}) {
    super(message);
    this.name = "TextTooLongError";
    this.indices = indices;
    this.limit = limit;
  }
}

/**
 * What `onTruncate` receives when texts were cut at the maximum length: `indices` (positions in
 * the call's input), `total` (texts in the call), `limit` (tokens) and a readable `message`.
 */
export class TruncationReport {
  constructor(message, { indices = [], total = 0, limit = 0 } = {}) {
    this.name = "TruncationReport";
    this.message = message;
    this.indices = indices;
    this.total = total;
    this.limit = limit;
  }

  toString() {
    return `${this.name}: ${this.message}`;
  }
}
