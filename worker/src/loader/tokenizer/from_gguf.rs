//! A tokenizer rebuilt from the `tokenizer.ggml.*` metadata of a GGUF file, the way
//! transformers' GGUF loader rebuilds it, for the two kinds llama-family files carry:
//! `gpt2` (byte-level BPE with merges, as SmolLM2 and Llama 3) and `llama` (SentencePiece
//! BPE stored as tokens and scores, as Llama 1/2, Vicuna and Mistral).

use candle_core::quantized::gguf_file::Value;
use std::collections::HashMap;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// llama.cpp's token types; control tokens are special (never split, skipped in decoding),
/// user-defined ones are matched whole in the text.
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// SentencePiece's word-boundary mark, which stands for a space.
const SPACE_MARK: char = '\u{2581}';

/// `tokenizer.ggml.pre` values of Llama 3's vocabulary.
const LLAMA3_PRE: [&str; 2] = ["llama-bpe", "llama3"];

/// Llama 3's pre-tokenizer split (llama.cpp `llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer and the BOS id to prepend (when the file asks for one). Errors are the
/// reason, naming the metadata key.
pub(super) fn build(meta: &HashMap<String, Value>) -> Result<(Tokenizer, Option<u32>), String> {
    let kind = match meta.get("tokenizer.ggml.model") {
        Some(Value::String(s)) => s.as_str(),
        _ => return Err("metadata `tokenizer.ggml.model` missing".into()),
    };
    let tokens = strings(meta, "tokenizer.ggml.tokens")?;
    let types: Vec<i32> = match meta.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) => {
            a.iter().map(|v| v.to_i32().map_err(|_| "`tokenizer.ggml.token_type` holds a non-integer".to_string())).collect::<Result<_, _>>()?
        }
        _ => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(format!("`tokenizer.ggml.token_type` has {} entries for {} tokens", types.len(), tokens.len()));
    }
    let pre = match meta.get("tokenizer.ggml.pre") {
        Some(Value::String(s)) => s.as_str(),
        _ => "default",
    };
    let (mut tokenizer, bos_by_default) = match kind {
        // Llama 3 adds a BOS unless told otherwise (llama.cpp's default for this vocabulary).
        "gpt2" => (byte_level_bpe(meta, &tokens, pre)?, LLAMA3_PRE.contains(&pre)),
        // SentencePiece models get a BOS unless the file says otherwise, as in llama.cpp.
        "llama" => (sentencepiece_bpe(meta, &tokens)?, true),
        other => {
            return Err(format!(
                "tokenizer model `{other}` is not supported (supported: gpt2 byte-level BPE, llama SentencePiece BPE); \
                 use a Hugging Face directory with tokenizer.json"
            ))
        }
    };
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
        .map(|(tok, &t)| AddedToken::from(tok.clone(), t == TOKEN_TYPE_CONTROL))
        .collect();
    tokenizer.add_special_tokens(special).map_err(|e| format!("special tokens: {e}"))?;
    let add_bos = match meta.get("tokenizer.ggml.add_bos_token") {
        Some(Value::Bool(b)) => *b,
        _ => bos_by_default,
    };
    let bos = match (add_bos, meta.get("tokenizer.ggml.bos_token_id")) {
        (false, _) => None,
        (true, Some(v)) => Some(v.to_u32().map_err(|_| "`tokenizer.ggml.bos_token_id` is not a u32".to_string())?),
        (true, None) => return Err("a BOS is to be added but `tokenizer.ggml.bos_token_id` is missing".into()),
    };
    Ok((tokenizer, bos))
}

fn strings(meta: &HashMap<String, Value>, key: &str) -> Result<Vec<String>, String> {
    let arr = meta.get(key).ok_or_else(|| format!("metadata `{key}` missing"))?.to_vec().map_err(|_| format!("metadata `{key}` is not an array"))?;
    arr.iter().map(|v| v.to_string().cloned().map_err(|_| format!("metadata `{key}` holds a non-string"))).collect()
}

fn vocab(tokens: &[String]) -> Vocab {
    tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect()
}

/// GPT-2-style byte-level BPE with the file's merges and the pre-tokenizer it names.
fn byte_level_bpe(meta: &HashMap<String, Value>, tokens: &[String], pre: &str) -> Result<Tokenizer, String> {
    let merges = strings(meta, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| format!("merge `{m}` is not two tokens")))
        .collect::<Result<Vec<_>, String>>()?;
    // Llama 3's tokenizer takes a word that is itself a token whole, before any merge.
    let bpe = BPE::builder().vocab_and_merges(vocab(tokens), merges).ignore_merges(LLAMA3_PRE.contains(&pre)).build().map_err(|e| format!("BPE: {e}"))?;
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        "default" | "gpt2" => byte_level.into(),
        "llama-bpe" | "llama3" => {
            let split = Split::new(SplitPattern::Regex(LLAMA3_SPLIT.into()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| format!("pre-tokenizer regex: {e}"))?;
            Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
        }
        other => return Err(format!("pre-tokenizer `{other}` is not supported (supported: smollm, gpt2, llama-bpe)")),
    };
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_pre_tokenizer(Some(pre_tokenizer))
        .with_post_processor(Some(ByteLevel::new(false, true, true)))
        .with_decoder(Some(ByteLevel::new(false, true, true)));
    Ok(tokenizer)
}

/// SentencePiece BPE: merges recovered from the scores, `<0xXX>` byte fallback, spaces
/// written as `▁` with one prepended to the text (unless `add_space_prefix` is false).
fn sentencepiece_bpe(meta: &HashMap<String, Value>, tokens: &[String]) -> Result<Tokenizer, String> {
    let scores: Vec<f32> = match meta.get("tokenizer.ggml.scores") {
        Some(Value::Array(a)) => a.iter().map(|v| v.to_f32().map_err(|_| "`tokenizer.ggml.scores` holds a non-float".to_string())).collect::<Result<_, _>>()?,
        _ => return Err("metadata `tokenizer.ggml.scores` missing (a SentencePiece vocabulary needs it)".into()),
    };
    if scores.len() != tokens.len() {
        return Err(format!("`tokenizer.ggml.scores` has {} entries for {} tokens", scores.len(), tokens.len()));
    }
    let mut builder = BPE::builder().vocab_and_merges(vocab(tokens), merges_from_scores(tokens, &scores)).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = meta.get("tokenizer.ggml.unknown_token_id").and_then(|v| v.to_u32().ok()) {
        let name = tokens.get(unk as usize).ok_or_else(|| format!("`tokenizer.ggml.unknown_token_id` {unk} is not a token"))?;
        builder = builder.unk_token(name.clone());
    }
    let bpe = builder.build().map_err(|e| format!("BPE: {e}"))?;
    let prefix = !matches!(meta.get("tokenizer.ggml.add_space_prefix"), Some(Value::Bool(false)));
    let scheme = if prefix { PrependScheme::First } else { PrependScheme::Never };
    let space = Replace::new(SPACE_MARK.to_string(), " ").map_err(|e| format!("decoder: {e}"))?;
    let mut decoders = vec![space.into(), ByteFallback::new().into(), Fuse::new().into()];
    if prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(Metaspace::new(SPACE_MARK, scheme, false))).with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// The merges a SentencePiece vocabulary implies, best first: every split of a token into
/// two tokens, ranked by the merged token's score (ties: longer left, then longer right
/// piece first, then vocabulary order), as transformers' `generate_merges` ranks them.
fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    // (score, left chars, right chars, order of discovery, left, right)
    let mut merges = Vec::new();
    for (token, &score) in tokens.iter().zip(scores) {
        let mut local: Vec<(usize, usize, &str, &str)> = token
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = token.split_at(at);
                Some((*ids.get(l)?, *ids.get(r)?, l, r))
            })
            .collect();
        local.sort_by_key(|&(li, ri, _, _)| (li, ri));
        for (_, _, l, r) in local {
            merges.push((score, l.chars().count(), r.chars().count(), merges.len(), l, r));
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)).then(a.3.cmp(&b.3)));
    merges.into_iter().map(|m| (m.4.to_string(), m.5.to_string())).collect()
}
