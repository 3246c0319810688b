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

/// An export of SmolLM2's GGUF carries what transformers and lm-evaluation-harness read beside
/// `tokenizer.json`: the special tokens of the GGUF's metadata (read independently with
/// llama.cpp's `gguf` package: bos 1, eos 2, padding 2, unknown 0, no BOS added), its chat
/// template, and the generation ids.
#[test]
fn a_gguf_exports_its_special_tokens_chat_template_and_generation_ids() {
    let opened = llmprune_worker::loader::open_model(&llmprune_tests::smollm2_gguf()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let written = opened.tokenizer.save_companions(tmp.path(), 8192).unwrap();
    assert_eq!(written, ["tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]);
    let read = |name: &str| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(tmp.path().join(name)).unwrap()).unwrap() };
    let config = read("tokenizer_config.json");
    assert_eq!(config["bos_token"], "<|im_start|>");
    assert_eq!(config["eos_token"], "<|im_end|>");
    assert_eq!(config["pad_token"], "<|im_end|>");
    assert_eq!(config["unk_token"], "<|endoftext|>");
    assert_eq!(config["add_bos_token"], false);
    assert_eq!(config["tokenizer_class"], "PreTrainedTokenizerFast");
    assert_eq!(config["model_max_length"], 8192);
    assert!(config["chat_template"].as_str().unwrap().starts_with("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system"));
    let map = read("special_tokens_map.json");
    assert_eq!((&map["bos_token"], &map["eos_token"], &map["pad_token"]), (&config["bos_token"], &config["eos_token"], &config["pad_token"]));
    assert_eq!(read("generation_config.json"), serde_json::json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}));
}

/// A Hugging Face directory's own companion files travel unchanged; a bare tokenizer.json
/// has none to write.
#[test]
fn a_hugging_face_directorys_companion_files_are_copied_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = llmprune_tests::tiny_model_dir("tiny_gqa", tmp.path());
    let bare = llmprune_worker::loader::open_model(&dir).unwrap();
    let out = tmp.path().join("bare");
    std::fs::create_dir(&out).unwrap();
    assert!(bare.tokenizer.save_companions(&out, 64).unwrap().is_empty());
    let config = "{\"bos_token\": \"w1\", \"custom\": [1, 2]}\n";
    std::fs::write(dir.join("tokenizer_config.json"), config).unwrap();
    std::fs::write(dir.join("generation_config.json"), "{\"eos_token_id\": 2}").unwrap();
    let opened = llmprune_worker::loader::open_model(&dir).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    assert_eq!(opened.tokenizer.save_companions(&out, 64).unwrap(), ["tokenizer_config.json", "generation_config.json"]);
    assert_eq!(std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap(), config);
    assert_eq!(std::fs::read_to_string(out.join("generation_config.json")).unwrap(), "{\"eos_token_id\": 2}");
}
