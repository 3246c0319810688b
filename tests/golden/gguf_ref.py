"""Shared helpers of the PyTorch reference scripts: load a GGUF with transformers, LLM-Pruner's PPL text protocol.

Tokenizer note: transformers (checked with 5.24.0) builds the tokenizer of a GGUF with a plain
ByteLevel pre-tokenizer and ignores the GGUF key `tokenizer.ggml.pre`. For SmolLM2 that key is
"smollm", which llama.cpp pre-tokenizes with the regexes ["\\p{N}", <GPT-2 regex>] (every digit is
its own pre-token), the same as the original Hugging Face SmolLM2 tokenizer.json
(Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false)]). Without the fix,
whitespace before a digit merges differently (e.g. " :\\n\\n\\n 1" -> 'Ġ','ĊĊĊ','Ġ','1' instead of
'ĠĊĊ','ĊĠ','1') and the WikiText-2 test text gives 304,986 tokens instead of 304,978.
`load_gguf_tokenizer(..., faithful=True)` (the default) restores the Digits split.
"""

import os

import torch

DEFAULT_GGUF = os.path.expanduser("~/.cache/llmprune/models/SmolLM2-135M-Instruct.Q4_1.gguf")
DIGIT_PRETOKENIZER_TYPES = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}


def gguf_pre_type(gguf_path):
    from gguf import GGUFReader

    r = GGUFReader(gguf_path)
    f = r.fields.get("tokenizer.ggml.pre")
    return None if f is None else f.contents()


def load_gguf_tokenizer(gguf_path, faithful=True):
    """(tokenizer, note). faithful=True applies the digit pre-tokenizer fix described above."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    d, name = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    pre = gguf_pre_type(gguf_path)
    note = {"tokenizer.ggml.pre": pre, "digits_fix_applied": False}
    if faithful and pre in DIGIT_PRETOKENIZER_TYPES:
        bt = tok.backend_tokenizer
        cur = bt.pre_tokenizer
        if type(cur).__name__ == "ByteLevel":
            bt.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ])
            note["digits_fix_applied"] = True
    return tok, note


def load_gguf_model(gguf_path, dtype=torch.float32, attn_implementation=None):
    from transformers import AutoModelForCausalLM

    d, name = os.path.split(os.path.abspath(gguf_path))
    kw = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    try:
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=dtype, **kw)
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=dtype, **kw)
    model.config.use_cache = False
    model.eval()
    return model


def read_rows(name, path):
    """Dataset rows as the Hugging Face datasets give them (see the PPL protocol)."""
    with open(path, "r", encoding="utf-8", newline="") as f:
        data = f.read()
    parts = data.split("\n")
    if "ptb" in name.lower():
        lines = parts[:-1] if data.endswith("\n") else parts
        return [line.strip() for line in lines]
    if "wiki" in name.lower():
        lines = [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
        return ["" if not line.strip() else line for line in lines]
    raise ValueError(f"dataset name {name!r} must contain 'wiki' or 'ptb' to choose the row format")


def protocol_ids(tok, name, path):
    """All token ids of a dataset per LLM-Pruner's protocol: rows joined with \\n\\n, tokenized once (1-D int64)."""
    text = "\n\n".join(read_rows(name, path))
    return tok(text, return_tensors="pt")["input_ids"][0].to(torch.int64)
