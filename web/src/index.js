/** The web embedder's public surface; Node code reads local folders with `./folder-loader.js`. */
export { Embedder } from "./embedder.js";
export { urlLoader } from "./url-loader.js";
export { ArtifactError, PromptError, TextTooLongError, TruncationReport } from "./errors.js";
export { withPrompts, TITLE_SLOT } from "./prompts.js";
export { finish, cosine, cosineMatrix, l2NormalizeInPlace } from "./vectors.js";
export { lengthBatches, padBatch } from "./batching.js";
export { parseManifest, sessionConfig, webFiles, sha256Hex, MANIFEST_NAME } from "./artifact.js";
