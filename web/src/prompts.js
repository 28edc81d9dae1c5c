/**
 * Prompts and document titles: the exact text the model reads for each input. The same rule as
 * runtime/prompts.py (`with_prompts`); the prompts themselves come from the artifact's manifest.
 */
import { PromptError } from "./errors.js";

/** How EmbeddingGemma's document prompt marks where a title goes (`title: none | text: `). */
export const TITLE_SLOT = "title: none";

/**
 * Each text with its prompt in front: the model's named prompt, a literal `prompt`, or none.
 * `titles` (one string or null per text) fill the prompt's `title: none` slot and, when no prompt is
 * named, select the `document` prompt; a falsy title leaves `title: none`. Without a name, prompt
 * or titles, `defaultPromptName` applies (EmbeddingGemma has none).
 * Throws PromptError (which argument, what is allowed) or TypeError for a non-string.
 */
export function withPrompts(texts, prompts, { promptName = null, prompt = null, titles = null, defaultPromptName = null } = {}) {
  if (prompt != null && promptName != null) throw new PromptError("give promptName or prompt, not both", "prompt");
  if (prompt != null && typeof prompt !== "string") throw new TypeError(`prompt must be a string, got ${typeName(prompt)}`);
  if (promptName != null && typeof promptName !== "string") {
    throw new TypeError(`promptName must be a string, got ${typeName(promptName)}`);
  }
  const titleList = checkTitles(titles, texts.length);
  if (prompt != null) {
    if (titleList !== null) {
      throw new PromptError("titles fill the document prompt's title slot; they cannot be used with a literal prompt", "titles");
    }
    return texts.map((t) => prompt + t);
  }
  const name = promptName != null ? promptName : titleList !== null ? "document" : defaultPromptName;
  if (name == null) return [...texts];
  if (!Object.hasOwn(prompts, name)) {
    throw new PromptError(`unknown prompt name ${JSON.stringify(name)}; this model has: ${Object.keys(prompts).sort().join(", ")}`, "promptName");
  }
  const template = prompts[name];
  if (titleList === null) return texts.map((t) => template + t);
  if (!template.includes(TITLE_SLOT)) {
    throw new PromptError(`prompt ${JSON.stringify(name)} (${JSON.stringify(template)}) has no ${JSON.stringify(TITLE_SLOT)} slot; titles go with the 'document' prompt`, "titles");
  }
  // replace() with a string pattern replaces the first occurrence only, like Python's replace(..., 1)
  return texts.map((t, i) => (titleList[i] ? template.replace(TITLE_SLOT, () => `title: ${titleList[i]}`) : template) + t);
}

function checkTitles(titles, count) {
  if (titles == null) return null;
  const list = typeof titles === "string" ? [titles] : Array.isArray(titles) ? titles : null;
  if (list === null) throw new TypeError(`titles must be a string or an array of strings/null, got ${typeName(titles)}`);
  if (list.length !== count) {
    throw new PromptError(`got ${list.length} titles for ${count} texts; give one title (or null) per text`, "titles");
  }
  list.forEach((title, i) => {
    if (title != null && typeof title !== "string") throw new TypeError(`titles[${i}] is ${typeName(title)}, expected string or null`);
  });
  return list;
}

/** A short name of a value's type for error messages (`number`, `null`, `Array`, `Object`). */
export function typeName(value) {
  if (value === null) return "null";
  if (typeof value !== "object") return typeof value;
  return value.constructor?.name ?? "object";
}
