/**
 * Read artifact files from a local folder (Node only: uses node:fs). Browsers use `urlLoader`.
 */
import { readFile } from "node:fs/promises";
import path from "node:path";
import { ArtifactError } from "./errors.js";

/** A loader for the artifact folder at `dir` on this machine. */
export function folderLoader(dir) {
  const describe = (name) => path.join(dir, name);
  return {
    describe,
    async read(name) {
      try {
        return new Uint8Array(await readFile(describe(name)));
      } catch (cause) {
        if (cause.code === "ENOENT" || cause.code === "ENOTDIR") {
          throw new ArtifactError(name === "embedder.json"
            ? `${dir} has no embedder.json; it is not an artifact folder (build one with \`embeddinggemma-export --model ... --out DIR\`)`
            : `artifact file ${JSON.stringify(name)} is missing from ${dir}; copy the whole folder, not single files`, { file: name, cause });
        }
        throw new ArtifactError(`could not read ${describe(name)}: ${cause.message}`, { file: name, cause });
      }
    },
  };
}
