//! Generation with a KV cache: greedy decoding continues as a full forward pass over the
//! growing sequence would, and on SmolLM2 as transformers' `generate` does
//! (`tests/golden/gen_generate.py`); sampling is seeded, top-k 1 is greedy.

use candle_core::{Device, Tensor};
use llmprune_shared::PyRandom;
use llmprune_tests::{fixture, smollm2_gguf, tiny_model_dir};
use llmprune_worker::generate::{generate_ids, sample, Sampling};
use llmprune_worker::model::Exec;
use llmprune_worker::{load_model, LlamaModel, LoadOptions};

fn greedy(n: usize) -> Sampling {
    Sampling { max_new_tokens: n, temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
}

/// Greedy decoding without a cache: the whole sequence through the model at every step.
fn greedy_without_cache(model: &LlamaModel, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut ids = prompt.to_vec();
    for _ in 0..n {
        let t = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = model.logits(&t, Exec::Inference).unwrap().squeeze(0).unwrap().get(ids.len() - 1).unwrap().to_vec1::<f32>().unwrap();
        let next = logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32;
        if Some(next) == model.spec.eos_token_id {
            break;
        }
        ids.push(next);
    }
    ids[prompt.len()..].to_vec()
}

#[test]
fn cached_greedy_decoding_equals_recomputing_and_sampling_is_seeded() {
    let tmp = tempfile::tempdir().unwrap();
    let model = load_model(&tiny_model_dir("tiny_gqa", tmp.path()), LoadOptions::full, &Device::Cpu).unwrap().model;
    let prompt = [5, 17, 33, 2, 71, 9];
    let got = generate_ids(&model, &prompt, &greedy(12)).unwrap();
    assert_eq!(got, greedy_without_cache(&model, &prompt, 12));

    // The families whose cached path differs (q/k norms, partial interleaved rotary).
    for name in ["tiny_qwen3", "tiny_glm"] {
        let family = load_model(&tiny_model_dir(name, tmp.path()), LoadOptions::full, &Device::Cpu).unwrap().model;
        let prompt = [5, 17, 33, 2, 61, 9];
        assert_eq!(generate_ids(&family, &prompt, &greedy(12)).unwrap(), greedy_without_cache(&family, &prompt, 12), "{name}");
    }

    let s = |seed, top_k, top_p| Sampling { max_new_tokens: 10, temperature: 0.8, top_k, top_p, seed };
    assert_eq!(generate_ids(&model, &prompt, &s(7, 0, 0.9)).unwrap(), generate_ids(&model, &prompt, &s(7, 0, 0.9)).unwrap());
    assert_eq!(generate_ids(&model, &prompt, &s(7, 1, 1.0)).unwrap(), generate_ids(&model, &prompt, &greedy(10)).unwrap(), "top-k 1 is greedy");
    assert!(generate_ids(&model, &prompt, &Sampling { top_p: 0.0, ..s(1, 0, 1.0) }).is_err());
}

#[test]
fn sampling_keeps_the_top_k_then_the_top_p_mass() {
    let logits = [0.0f32, 3.0, 2.0, 1.0, -1.0];
    let draws = |s: &Sampling| -> Vec<u32> {
        let mut rng = PyRandom::new(3);
        (0..400).map(|_| sample(&logits, s, &mut rng)).collect()
    };
    // top-k 2: only tokens 1 and 2.
    let k2 = draws(&Sampling { max_new_tokens: 1, temperature: 1.0, top_k: 2, top_p: 1.0, seed: 0 });
    assert!(k2.iter().all(|t| [1, 2].contains(t)) && k2.contains(&1) && k2.contains(&2));
    // Softmax of (3, 2, 1, 0, -1): p ≈ .636, .234, .086, .032, .012; top-p 0.8 keeps tokens 1 and 2.
    let p8 = draws(&Sampling { max_new_tokens: 1, temperature: 1.0, top_k: 0, top_p: 0.8, seed: 0 });
    assert!(p8.iter().all(|t| [1, 2].contains(t)));
    let share = p8.iter().filter(|&&t| t == 1).count() as f64 / 400.0;
    assert!((share - 0.636 / 0.870).abs() < 0.06, "token 1 drawn {share}");
}

#[test]
fn smollm2_greedy_continuations_are_transformers_s() {
    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("generate_smollm2.json")).unwrap()).unwrap();
    let loaded = load_model(&smollm2_gguf(), LoadOptions::full, &Device::Cpu).unwrap();
    let eos = loaded.model.spec.eos_token_id;
    for case in golden["cases"].as_array().unwrap() {
        let ids = |k: &str| case[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<u32>>();
        let prompt = loaded.tokenizer.encode(case["prompt"].as_str().unwrap()).unwrap();
        assert_eq!(prompt, ids("prompt_ids"));
        let mut want = ids("new_ids");
        if let Some(end) = want.iter().position(|&t| Some(t) == eos) {
            want.truncate(end);
        }
        let got = generate_ids(&loaded.model, &prompt, &greedy(want.len().max(1))).unwrap();
        assert_eq!(got, want, "{}", case["prompt"]);
    }
}
