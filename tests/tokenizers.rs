//! Tokenizers rebuilt from GGUF metadata against transformers' GGUF loader (fixture from
//! `tests/golden/gen_spm_tokenizer.py`): a SentencePiece-llama vocabulary stored as tokens,
//! scores and types, with byte fallback, control and user-defined tokens.

use candle_core::quantized::gguf_file::Value;
use llmprune_tests::{assert_contains, fixture};
use llmprune_worker::loader::TextTokenizer;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

#[derive(Deserialize)]
struct SpmFixture {
    tokens: Vec<String>,
    scores: Vec<f32>,
    token_type: Vec<i32>,
    bos_token_id: u32,
    unk_token_id: u32,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

fn spm_fixture() -> SpmFixture {
    let path = fixture("spm_tokenizer").join("spm_tokenizer.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The metadata llama.cpp writes for this vocabulary.
fn spm_metadata(f: &SpmFixture) -> HashMap<String, Value> {
    let mut meta = HashMap::new();
    meta.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
    meta.insert("tokenizer.ggml.tokens".into(), Value::Array(f.tokens.iter().cloned().map(Value::String).collect()));
    meta.insert("tokenizer.ggml.scores".into(), Value::Array(f.scores.iter().copied().map(Value::F32).collect()));
    meta.insert("tokenizer.ggml.token_type".into(), Value::Array(f.token_type.iter().copied().map(Value::I32).collect()));
    meta.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(f.bos_token_id));
    meta.insert("tokenizer.ggml.unknown_token_id".into(), Value::U32(f.unk_token_id));
    meta
}

#[test]
fn sentencepiece_gguf_tokenizer_matches_transformers() {
    let f = spm_fixture();
    let tokenizer = TextTokenizer::from_gguf(Path::new("spm.gguf"), &spm_metadata(&f)).unwrap();
    let mut multi_piece = 0;
    for case in &f.cases {
        let ids = tokenizer.encode(&case.text).unwrap();
        // A SentencePiece GGUF without `add_bos_token` gets a BOS, as llama.cpp gives it.
        assert_eq!(ids.first(), Some(&f.bos_token_id), "{:?}: no BOS", case.text);
        assert_eq!(&ids[1..], &case.ids[..], "{:?}", case.text);
        assert_eq!(tokenizer.decode(&case.ids).unwrap(), case.decoded, "decoding {:?}", case.text);
        multi_piece += case.ids.iter().filter(|&&i| f.tokens[i as usize].chars().count() > 1).count();
    }
    // The merges must have been exercised, not just single characters and bytes.
    assert!(multi_piece > 20, "only {multi_piece} multi-character pieces: the vocabulary did not merge");
}

#[test]
fn sentencepiece_gguf_flags_are_honoured() {
    let f = spm_fixture();
    let mut meta = spm_metadata(&f);
    meta.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
    meta.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false));
    let tokenizer = TextTokenizer::from_gguf(Path::new("spm.gguf"), &meta).unwrap();
    let ids = tokenizer.encode("hello").unwrap();
    assert_ne!(ids.first(), Some(&f.bos_token_id), "add_bos_token=false must not add a BOS");
    let first = &f.tokens[ids[0] as usize];
    assert!(!first.starts_with('\u{2581}'), "add_space_prefix=false must not prepend ▁ (got {first:?})");
    assert_eq!(tokenizer.decode(&ids).unwrap(), "hello");
}

#[test]
fn sentencepiece_gguf_without_scores_is_refused() {
    let f = spm_fixture();
    let mut meta = spm_metadata(&f);
    meta.remove("tokenizer.ggml.scores");
    let err = TextTokenizer::from_gguf(Path::new("spm.gguf"), &meta).err().expect("must fail").to_string();
    assert_contains(&err, &["spm.gguf", "tokenizer.ggml.scores"]);
    meta.insert("tokenizer.ggml.scores".into(), Value::Array(vec![Value::F32(0.0)]));
    let err = TextTokenizer::from_gguf(Path::new("spm.gguf"), &meta).err().expect("must fail").to_string();
    assert_contains(&err, &["spm.gguf", "1 entries", "tokens"]);
    let mut meta = spm_metadata(&f);
    meta.insert("tokenizer.ggml.token_type".into(), Value::Array(vec![Value::I32(1); 3]));
    let err = TextTokenizer::from_gguf(Path::new("spm.gguf"), &meta).err().expect("must fail").to_string();
    assert_contains(&err, &["spm.gguf", "`tokenizer.ggml.token_type` has 3 entries for 991 tokens"]);
}

#[test]
fn unknown_gguf_tokenizer_model_is_refused() {
    let mut meta = spm_metadata(&spm_fixture());
    meta.insert("tokenizer.ggml.model".into(), Value::String("bert".into()));
    let err = TextTokenizer::from_gguf(Path::new("wp.gguf"), &meta).err().expect("must fail").to_string();
    assert_contains(&err, &["wp.gguf", "`bert` is not supported"]);
}

#[test]
fn saved_sentencepiece_tokenizer_keeps_its_bos() {
    let f = spm_fixture();
    let tokenizer = TextTokenizer::from_gguf(Path::new("spm.gguf"), &spm_metadata(&f)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tokenizer.json");
    tokenizer.save(&path).unwrap();
    let back = TextTokenizer::from_file(&path).unwrap();
    for case in &f.cases {
        let ids = back.encode(&case.text).unwrap();
        assert_eq!(ids, tokenizer.encode(&case.text).unwrap(), "{:?}", case.text);
        assert_eq!(ids[0], f.bos_token_id);
    }
}
