//! Helpers shared by the end-to-end and golden tests: where fixtures, team data and the
//! fetched reference model live, and tensor comparisons.

use candle_core::{DType, Device, Tensor};
use llmprune_shared::ModelSpec;
use llmprune_worker::loader::HfWeights;
use llmprune_worker::{LlamaModel, LoadOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the repo").to_path_buf()
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests").join("fixtures").join(name)
}

/// The team's data folder (`../shared/data` beside the repo), or `LLMPRUNE_DATA_DIR`.
pub fn data_dir() -> PathBuf {
    let dir = std::env::var_os("LLMPRUNE_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("..").join("shared").join("data"));
    assert!(dir.is_dir(), "test data not found at {} (set LLMPRUNE_DATA_DIR)", dir.display());
    dir
}

/// The fetched SmolLM2 GGUF. CI fetches it first (`llmprune fetch smollm2`); a missing
/// model is a failure, not a skip.
pub fn smollm2_gguf() -> PathBuf {
    let path = std::env::var_os("LLMPRUNE_SMOLLM2").map(PathBuf::from).unwrap_or_else(|| {
        let cache =
            std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
        cache.join("llmprune/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    assert!(path.is_file(), "{} missing: run `llmprune fetch smollm2` (or set LLMPRUNE_SMOLLM2)", path.display());
    path
}

pub fn load_tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
    d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let num = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    let den = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    num / den.max(1e-30)
}

/// A fixture model directory without a tokenizer (tiny vocabularies have none).
pub fn tiny_model(name: &str) -> LlamaModel {
    let dir = fixture(name);
    let spec = ModelSpec::from_hf_config_file(&dir.join("config.json")).unwrap();
    let weights = llmprune_worker::loader::CanonicalWeights::new(HfWeights::open(&dir).unwrap(), &spec);
    let opts = LoadOptions::full(&spec);
    LlamaModel::load(spec, &weights, &opts, &Device::Cpu).unwrap()
}

/// Writes a tiny fixture model as a llama.cpp-style GGUF: q/k rows permuted the way
/// llama.cpp's converter permutes them, a byte-level BPE vocabulary of the model's size,
/// tensors stored as `dtype`.
pub fn write_tiny_gguf(name: &str, out: &Path, architecture: &str, dtype: candle_core::quantized::GgmlDType) {
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::QTensor;
    let dir = fixture(name);
    let spec = ModelSpec::from_hf_config_file(&dir.join("config.json")).unwrap();
    let weights = load_tensors(&dir.join("model.safetensors"));
    let permute = |w: &Tensor, n_head: usize| {
        let (rows, cols) = w.dims2().unwrap();
        w.reshape((n_head, 2, rows / n_head / 2, cols)).unwrap().transpose(1, 2).unwrap().reshape((rows, cols)).unwrap()
    };
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (hf, t) in &weights {
        let gg = gguf_name(hf);
        let t = match hf.split('.').nth(2).and_then(|i| i.parse::<usize>().ok()) {
            Some(i) if hf.ends_with("q_proj.weight") => permute(t, spec.layers[i].n_heads),
            Some(i) if hf.ends_with("k_proj.weight") => permute(t, spec.layers[i].n_kv_heads),
            _ => t.clone(),
        };
        let q = if t.rank() == 1 { QTensor::quantize(&t, candle_core::quantized::GgmlDType::F32) } else { QTensor::quantize(&t, dtype) };
        tensors.push((gg, q.unwrap()));
    }
    let uints = |v: Vec<usize>| Value::Array(v.into_iter().map(|x| Value::U32(x as u32)).collect());
    // Byte-level symbols for the first tokens, then two-letter tokens made by merges.
    let mut tokens: Vec<String> = (b'a'..=b'z').map(|c| (c as char).to_string()).collect();
    let mut merges = Vec::new();
    'outer: for a in b'a'..=b'z' {
        for b in b'a'..=b'z' {
            if tokens.len() == spec.vocab_size {
                break 'outer;
            }
            tokens.push(format!("{}{}", a as char, b as char));
            merges.push(Value::String(format!("{} {}", a as char, b as char)));
        }
    }
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String(architecture.into())),
        ("llama.embedding_length", Value::U32(spec.hidden_size as u32)),
        ("llama.block_count", Value::U32(spec.n_layers() as u32)),
        ("llama.attention.head_count", uints(spec.layers.iter().map(|l| l.n_heads).collect())),
        ("llama.attention.head_count_kv", uints(spec.layers.iter().map(|l| l.n_kv_heads).collect())),
        ("llama.feed_forward_length", uints(spec.layers.iter().map(|l| l.intermediate_size).collect())),
        ("llama.rope.dimension_count", Value::U32(spec.head_dim as u32)),
        ("llama.rope.freq_base", Value::F32(spec.rope_theta as f32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(spec.rms_norm_eps as f32)),
        ("llama.context_length", Value::U32(spec.max_position_embeddings as u32)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.merges", Value::Array(merges)),
    ];
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(out).unwrap();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
}

/// llama.cpp's name for a Hugging Face tensor name.
fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").expect("a layer tensor");
    let (i, name) = rest.split_once('.').unwrap();
    let g = match name {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => panic!("unexpected tensor {other}"),
    };
    format!("blk.{i}.{g}")
}

/// A word-level `tokenizer.json` with `n` tokens.
pub fn write_word_tokenizer(path: &Path, n: usize) {
    let doc = llmprune_worker::synth::word_tokenizer(n);
    std::fs::write(path, serde_json::to_string(&doc).unwrap()).unwrap();
}

/// A copy of a fixture directory with a tokenizer of the model's vocabulary size.
pub fn tiny_model_dir(name: &str, into: &Path) -> PathBuf {
    let src = fixture(name);
    let dst = into.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let spec = ModelSpec::from_hf_config_file(&dst.join("config.json")).unwrap();
    write_word_tokenizer(&dst.join("tokenizer.json"), spec.vocab_size);
    dst
}

/// Asserts that an error message names every one of `parts`.
pub fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} should contain {p:?}");
    }
}

/// Every tensor of a model directory (one file or shards), as f32 values by name.
pub fn model_tensors(dir: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let opened = llmprune_worker::loader::open_model(dir).unwrap();
    opened
        .weights
        .names()
        .into_iter()
        .map(|n| {
            let t = opened.weights.load(&n, &candle_core::Device::Cpu).unwrap();
            (n, t.flatten_all().unwrap().to_dtype(candle_core::DType::F32).unwrap().to_vec1::<f32>().unwrap())
        })
        .collect()
}

/// Words of the tiny models' vocabulary (`w1` … `w95`), deterministic.
fn tiny_words(seed: usize, n: usize) -> String {
    (0..n).map(|j| format!("w{}", 1 + (seed * 31 + j * 17) % 95)).collect::<Vec<_>>().join(" ")
}

/// The seven zero-shot task files, in both layouts, `n` documents each of the tiny models'
/// words, in `root/zeroshot`.
pub fn tiny_task_dir(root: &Path, n: usize) -> PathBuf {
    use serde_json::{json, Value};
    let words = tiny_words;
    let dir = root.join("zeroshot");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |file: &str, f: &dyn Fn(usize) -> Value| {
        let lines: Vec<String> = (0..n).map(|i| f(i).to_string()).collect();
        std::fs::write(dir.join(file), lines.join("\n") + "\n").unwrap();
    };
    write("boolq.validation.jsonl", &|i| json!({"question": words(i, 4), "passage": words(i + 50, 3 + i % 9), "answer": i % 3 == 0}));
    write("piqa.validation.jsonl", &|i| json!({"goal": words(i, 5), "sol1": words(i + 1, 4), "sol2": words(i + 2, 2 + i % 5), "label": i % 2}));
    write("hellaswag.validation.jsonl", &|i| {
        json!({"activity_label": words(i, 2), "ctx_a": words(i + 3, 6), "ctx_b": words(i + 4, 2),
        "endings": [words(i + 5, 3), format!("[step] {}", words(i + 6, 4)), words(i + 7, 2), words(i + 8, 5)], "label": format!("{}", i % 4)})
    });
    write(
        "winogrande_xl.validation.jsonl",
        &|i| json!({"sentence": format!("{} _ {}", words(i, 5), words(i + 9, 3)), "option1": "w7", "option2": "w8", "answer": if i % 2 == 0 { "1" } else { "2" }}),
    );
    for task in ["arc_easy", "arc_challenge"] {
        write(
            &format!("{task}.test.jsonl"),
            &|i| json!({"id": format!("q{i}"), "question": words(i, 6), "choices": [words(i + 1, 2), words(i + 2, 3), words(i + 3, 1)], "gold": i % 3}),
        );
    }
    write(
        "openbookqa.test.jsonl",
        &|i| json!({"id": format!("o{i}"), "question": words(i, 7), "choices": [words(i + 1, 2), words(i + 2, 2), words(i + 3, 3), words(i + 4, 1)], "gold": i % 4}),
    );
    dir
}

/// Alpaca-format instruction records of the tiny models' words, as JSON Lines.
pub fn tiny_instruct_data(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({"instruction": format!("w{} w{}", i % 90 + 1, i % 7 + 3), "input": "", "output": format!("w{} w{} w{}", i % 50 + 2, i % 11 + 9, i % 13 + 20)})
                .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

/// A text of the tiny models' words for perplexity.
pub fn tiny_text(path: &Path, n: usize) {
    std::fs::write(path, (0..n).map(|i| format!("w{}", 1 + i * 13 % 95)).collect::<Vec<_>>().join(" ")).unwrap();
}
