/**
 * Text -> token ids with `@huggingface/tokenizers` on the artifact's tokenizer.json, truncated the
 * way Python `tokenizers` does it: the special tokens of the post-processor (BOS 2 ... EOS 1 for
 * Gemma) around at most `maxLength - specials` pieces.
 */
import { Tokenizer } from "@huggingface/tokenizers";

export class TextTokenizer {
  /** Build from the parsed tokenizer.json object; `maxLength` counts the special tokens too. */
  constructor(tokenizerJson, maxLength) {
    this._tok = new Tokenizer(tokenizerJson, {});
    // The post-processor's specials, found by encoding a probe with and without them.
    const withSpecials = this._tok.encode("a").ids;
    const body = this._tok.encode("a", { add_special_tokens: false }).ids;
    const at = indexOfRun(withSpecials, body);
    if (at < 0) throw new Error("tokenizer.json's post-processor changes the text's own ids; this embedder cannot truncate it");
    this.prefix = withSpecials.slice(0, at);
    this.suffix = withSpecials.slice(at + body.length);
    this.maxLength = maxLength;
    this._budget = maxLength - this.prefix.length - this.suffix.length;
  }

  /** Token ids of the text alone, no special tokens, no truncation. */
  pieces(text) {
    return this._tok.encode(text, { add_special_tokens: false }).ids;
  }

  /** Ids per text (specials added, truncated to `maxLength`) and the indices of texts that were cut. */
  encodeBatch(texts) {
    const ids = [];
    const cut = [];
    texts.forEach((text, i) => {
      let p = this.pieces(text);
      if (p.length > this._budget) {
        cut.push(i);
        p = p.slice(0, this._budget);
      }
      ids.push([...this.prefix, ...p, ...this.suffix]);
    });
    return { ids, cut };
  }

  /** Token counts before truncation, special tokens included. */
  fullLengths(texts) {
    return texts.map((t) => this.pieces(t).length + this.prefix.length + this.suffix.length);
  }
}

function indexOfRun(haystack, needle) {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}
