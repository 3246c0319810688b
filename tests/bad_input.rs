//! Bad input gives a clear error naming the file, tensor or field, never a panic.

use candle_core::quantized::GgmlDType;
use candle_core::Device;
use llmprune_tests::{assert_contains, tiny_model_dir, write_tiny_gguf, write_word_tokenizer};
use llmprune_worker::eval::perplexity::{CorpusKind, PplCorpus};
use llmprune_worker::{load_model, LoadOptions};
use std::path::Path;

fn load_err(path: &Path) -> String {
    match load_model(path, LoadOptions::full, &Device::Cpu) {
        Ok(_) => panic!("{} loaded but should not have", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let gone = tmp.path().join("nope");
    assert_contains(&load_err(&gone), &["nope"]);

    let dir = tiny_model_dir("tiny_gqa", tmp.path());
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    assert_contains(&load_err(&dir), &["tokenizer.json", "file not found"]);

    let dir = tiny_model_dir("tiny_tied_mha", tmp.path());
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert_contains(&load_err(&dir), &["no model.safetensors or model.safetensors.index.json"]);

    let dir = tiny_model_dir("tiny_gqa", &tmp.path().join("b"));
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert_contains(&load_err(&dir), &["config.json", "cannot read"]);
}

#[test]
fn corrupt_and_truncated_safetensors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_model_dir("tiny_gqa", tmp.path());
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();

    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    assert_contains(&load_err(&dir), &["model.safetensors", "not a valid safetensors file"]);

    let mut garbage = bytes.clone();
    garbage[8..40].copy_from_slice(b"this is not the json header!!!!!");
    std::fs::write(&file, &garbage).unwrap();
    assert_contains(&load_err(&dir), &["model.safetensors", "not a valid safetensors file"]);

    std::fs::write(&file, b"\xff\xff\xff\xff\xff\xff\xff\x7f").unwrap();
    assert_contains(&load_err(&dir), &["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn truncated_gguf_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m.gguf");
    write_tiny_gguf("tiny_gqa", &path, "llama", GgmlDType::F32);
    let bytes = std::fs::read(&path).unwrap();
    // Cut inside the tensor data: the header parses, a tensor would run past the end.
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    assert_contains(&load_err(&path), &["m.gguf", "truncated"]);
    // Cut inside the header.
    std::fs::write(&path, &bytes[..200]).unwrap();
    assert_contains(&load_err(&path), &["m.gguf", "not a valid GGUF file"]);
    std::fs::write(&path, b"GGUF").unwrap();
    assert_contains(&load_err(&path), &["m.gguf", "not a valid GGUF file"]);
}

#[test]
fn gguf_of_another_architecture_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("other.gguf");
    write_tiny_gguf("tiny_gqa", &path, "gpt2", GgmlDType::F32);
    assert_contains(&load_err(&path), &["other.gguf", "general.architecture", "`gpt2` is not supported"]);
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

#[test]
fn unsupported_model_type_and_inconsistent_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_model_dir("tiny_gqa", tmp.path());
    edit_config(&dir, |v| v["model_type"] = serde_json::json!("falcon"));
    assert_contains(&load_err(&dir), &["config.json", "unsupported model_type `falcon`"]);

    edit_config(&dir, |v| {
        v["model_type"] = serde_json::json!("llama");
        v["intermediate_size_per_layer"] = serde_json::json!([64, 48, 24]);
    });
    assert_contains(&load_err(&dir), &["model.layers.1.mlp.gate_proj.weight", "[40, 48]", "the config implies [48, 48]"]);

    edit_config(&dir, |v| {
        v["intermediate_size_per_layer"] = serde_json::json!([64, 40, 24]);
        v["num_key_value_heads_per_layer"] = serde_json::json!([2, 3, 1]);
    });
    assert_contains(&load_err(&dir), &["config.json", "layer 1 heads", "not a multiple of 3 KV heads"]);

    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    assert_contains(&load_err(&dir), &["config.json", "not valid JSON"]);
}

#[test]
fn tokenizer_larger_than_the_vocabulary_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_model_dir("tiny_gqa", tmp.path());
    write_word_tokenizer(&dir.join("tokenizer.json"), 100);
    assert_contains(&load_err(&dir), &["tokenizer.json", "token id 99", "vocab_size 96"]);
    std::fs::write(dir.join("tokenizer.json"), "[]").unwrap();
    assert_contains(&load_err(&dir), &["tokenizer.json", "tokenizer"]);
}

#[test]
fn perplexity_data_too_short_or_not_text() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_model_dir("tiny_gqa", tmp.path());
    let loaded = load_model(&dir, LoadOptions::full, &Device::Cpu).unwrap();
    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "w1 w2 w3\n").unwrap();
    let e = PplCorpus::load(CorpusKind::Ptb, &short, &loaded.tokenizer, 16).err().unwrap().to_string();
    assert_contains(&e, &["short.txt", "has 3 tokens, fewer than one chunk of 16"]);
    let binary = tmp.path().join("bin.txt");
    std::fs::write(&binary, [0xffu8, 0xfe, 0x00]).unwrap();
    let e = PplCorpus::load(CorpusKind::Wikitext2, &binary, &loaded.tokenizer, 16).err().unwrap().to_string();
    assert_contains(&e, &["bin.txt", "not UTF-8"]);
}

#[test]
fn sequences_longer_than_a_sliding_window_are_refused() {
    let mut model = llmprune_tests::tiny_model("tiny_gqa");
    model.spec.sliding_window = Some(4);
    let fits = candle_core::Tensor::new(&[[1u32, 2, 3, 4]], &Device::Cpu).unwrap();
    assert!(model.loss(&fits, llmprune_worker::Exec::Inference).is_ok());
    let long = candle_core::Tensor::new(&[[1u32, 2, 3, 4, 5]], &Device::Cpu).unwrap();
    let err = model.loss(&long, llmprune_worker::Exec::Inference).expect_err("must fail").to_string();
    assert_contains(&err, &["5 tokens", "sliding window of 4"]);
}
