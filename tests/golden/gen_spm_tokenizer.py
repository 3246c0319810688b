"""A SentencePiece-llama tokenizer as a GGUF stores it, and what transformers makes of it.

llama.cpp stores a SentencePiece-BPE vocabulary (`tokenizer.ggml.model = "llama"`) as tokens,
scores and token types, without merges. transformers rebuilds a tokenizer from exactly those
fields (`convert_gguf_tokenizer`: merges recovered from the scores, byte fallback, a `▁`
prefix); llmprune does the same in Rust. This writes a small synthetic vocabulary learnt from
WikiText-2 text, with byte tokens, a control and a user-defined token, the ids transformers
gives a set of awkward texts, and their decodings, to
`tests/fixtures/spm_tokenizer/spm_tokenizer.json`.

    python tests/golden/gen_spm_tokenizer.py --wikitext ../shared/data/wikitext2/wiki.test.raw
"""

import argparse
import collections
import json
import math
import os

from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

NORMAL, CONTROL, USER_DEFINED, BYTE = 1, 3, 4, 6

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    " leading space and  double  spaces",
    "Line one\nLine two\n\nafter a blank line",
    "Numbers 1234567 and 3.14, punctuation!?",
    "Unicode: café, naïve, 中文, emoji 🙂 and ẞ",
    "<|im_start|>user\nhello<|im_end|>",
    "thinking <think> inside </think>",
    "",
    " ",
    "unbelievably antidisestablishmentarianism",
]


def learn_pieces(text, count):
    """Characters, and the most frequent word pieces (`▁`-prefixed at word starts) with counts."""
    words = collections.Counter("\u2581" + w for w in text.split())
    pieces = collections.Counter()
    for word, n in words.items():
        for i in range(len(word)):
            for j in range(i + 2, min(len(word), i + 8) + 1):
                pieces[word[i:j]] += n
    singles = sorted({c for w in words for c in w})
    return singles, pieces.most_common(count)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wikitext", required=True)
    ap.add_argument("--out", default="tests/fixtures/spm_tokenizer/spm_tokenizer.json")
    ap.add_argument("--pieces", type=int, default=600)
    args = ap.parse_args()
    corpus = open(args.wikitext, encoding="utf-8").read()
    singles, best = learn_pieces(corpus[:200_000], args.pieces)

    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, CONTROL, CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>"), scores.append(0.0), types.append(BYTE)
    tokens += ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    scores += [0.0] * 4
    types += [CONTROL, CONTROL, USER_DEFINED, USER_DEFINED]
    seen = set(tokens)
    # Multi-character pieces score by a coarse log-frequency (higher is merged first), so
    # that many merges tie and the tie-breaking rules matter; single characters last.
    for piece, n in best:
        if piece not in seen:
            tokens.append(piece), scores.append(float(round(math.log2(n)))), types.append(NORMAL), seen.add(piece)
    for c in singles:
        if c not in seen:
            tokens.append(c), scores.append(-1e6), types.append(NORMAL), seen.add(c)

    tokenizer_dict = {
        "tokenizer_type": "llama", "tokens": tokens, "scores": scores, "token_type": types,
        "bos_token_id": 1, "eos_token_id": 2, "unk_token_id": 0,
    }
    backend, _ = convert_gguf_tokenizer("llama", tokenizer_dict)
    cases = []
    # Plus a stretch of held-out running text, where many merges compete.
    for t in TEXTS + [corpus[300_000:304_000]]:
        ids = backend.encode(t, add_special_tokens=False).ids
        cases.append({"text": t, "ids": ids, "decoded": backend.decode(ids, skip_special_tokens=True)})
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"tokens": tokens, "scores": scores, "token_type": types, "bos_token_id": 1,
                   "eos_token_id": 2, "unk_token_id": 0, "cases": cases}, f, ensure_ascii=False)
        f.write("\n")
    print(f"{len(tokens)} tokens, {len(cases)} cases -> {args.out}")


if __name__ == "__main__":
    main()
