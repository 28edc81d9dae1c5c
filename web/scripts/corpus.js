/**
 * The demo's search corpus: the project's own docs (README.md, docs/*.md) cut into passages by
 * section and paragraph, built when the server starts so it follows the docs.
 */
import { readFile, readdir } from "node:fs/promises";
import path from "node:path";

const MAX_WORDS = 90; // about 120-150 tokens: a passage reads as one answer and embeds quickly

/**
 * Passages [{id, source, section, text}] from README.md and docs/*.md under `root` (docs/notes/ only
 * with `notes`: its measurement logs would make the in-browser indexing take minutes).
 */
export async function buildCorpus(root, { notes = false } = {}) {
  const files = ["README.md", ...(await markdownFiles(root, "docs", notes))];
  const passages = [];
  for (const rel of files) {
    let text;
    try {
      text = await readFile(path.join(root, rel), "utf8");
    } catch {
      continue; // a docs tree without that file: the demo searches what there is
    }
    for (const p of splitMarkdown(text)) passages.push({ id: passages.length, source: rel, ...p });
  }
  return passages;
}

async function markdownFiles(root, dir, recurse) {
  let entries;
  try {
    entries = await readdir(path.join(root, dir), { withFileTypes: true });
  } catch {
    return [];
  }
  const out = [];
  for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
    const rel = path.join(dir, e.name);
    if (e.isDirectory() && recurse) out.push(...(await markdownFiles(root, rel, recurse)));
    else if (e.name.endsWith(".md")) out.push(rel);
  }
  return out;
}

/** Sections split into paragraphs (code blocks and tables dropped), long paragraphs cut at sentences. */
export function splitMarkdown(markdown) {
  const out = [];
  let section = "";
  let paragraph = [];
  let inCode = false;
  const flush = () => {
    const text = paragraph.join(" ").replace(/\s+/g, " ").trim();
    paragraph = [];
    if (text.split(" ").length >= 8) for (const piece of cutLong(text)) out.push({ section, text: piece });
  };
  for (const line of markdown.split("\n")) {
    if (line.startsWith("```")) {
      inCode = !inCode;
      flush();
      continue;
    }
    if (inCode) continue;
    const heading = /^#{1,6}\s+(.*)$/.exec(line);
    if (heading) {
      flush();
      section = heading[1].trim();
    } else if (!line.trim() || line.trim().startsWith("|")) {
      flush();
    } else {
      if (/^\s*([-*]|\d+\.)\s+/.test(line)) flush(); // each list item stands alone
      paragraph.push(line.replace(/^\s*([-*]|\d+\.)\s+/, "").replace(/\[([^\]]*)\]\([^)]*\)/g, "$1"));
    }
  }
  flush();
  return out;
}

function cutLong(text) {
  const words = text.split(" ");
  if (words.length <= MAX_WORDS) return [text];
  const sentences = text.split(/(?<=[.!?])\s+/);
  const pieces = [];
  let current = "";
  for (const s of sentences) {
    if (current && (current + " " + s).split(" ").length > MAX_WORDS) {
      pieces.push(current);
      current = s;
    } else {
      current = current ? `${current} ${s}` : s;
    }
  }
  if (current) pieces.push(current);
  // a single sentence over the limit is cut at words
  return pieces.flatMap((p) => {
    const w = p.split(" ");
    const parts = [];
    for (let i = 0; i < w.length; i += MAX_WORDS) parts.push(w.slice(i, i + MAX_WORDS).join(" "));
    return parts;
  });
}
