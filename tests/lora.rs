//! LoRA recovery against PEFT + torch (float64, `tests/golden/gen_lora.py`) on the tiny GQA
//! model with per-layer shapes: the masked instruction loss, the adapters' gradients, four
//! AdamW steps with warmup/decay, clipping and accumulation, the merge, and PEFT's file layout.

use candle_core::{Device, Tensor};
use llmprune_tests::{fixture, tiny_model_dir};
use llmprune_worker::collective::SingleRank;
use llmprune_worker::lora::{self, peft, LoraConfig, Projection};
use llmprune_worker::ops::IGNORE_TARGET;
use llmprune_worker::train::data::{micro_batch, Example, MicroBatch};
use llmprune_worker::train::optim::{AdamW, AdamWConfig};
use llmprune_worker::train::{micro_batch_loss, train_step, StepConfig, TrainGroups};
use llmprune_worker::{load_model, LlamaModel, LoadOptions};
use std::collections::HashMap;

struct Golden {
    tensors: HashMap<String, Tensor>,
    json: serde_json::Value,
}

fn golden() -> Golden {
    let dir = fixture("tiny_gqa");
    let tensors = candle_core::safetensors::load(dir.join("lora.safetensors"), &Device::Cpu).unwrap();
    let json = serde_json::from_str(&std::fs::read_to_string(dir.join("lora.json")).unwrap()).unwrap();
    Golden { tensors, json }
}

fn config() -> LoraConfig {
    LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, targets: Projection::ALL.to_vec() }
}

fn with(g: &Golden, prefix: &str) -> HashMap<String, Tensor> {
    g.tensors.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone()))).collect()
}

/// The tiny model with the golden initial adapters.
fn model(g: &Golden) -> (LlamaModel, Vec<(String, candle_core::Var)>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_model_dir("tiny_gqa", tmp.path());
    let mut m = load_model(&dir, LoadOptions::full, &Device::Cpu).unwrap().model;
    let vars = lora::attach_from(&mut m, &config(), &with(g, "init.")).unwrap();
    (m, vars)
}

/// The golden rows, prompts masked.
fn examples(g: &Golden) -> Vec<Example> {
    g.json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let ids: Vec<u32> = r[0].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let prompt = r[1].as_u64().unwrap() as usize;
            let labels = ids.iter().enumerate().map(|(i, &t)| if i < prompt { IGNORE_TARGET } else { t }).collect();
            Example { ids, labels, truncated: false }
        })
        .collect()
}

/// The golden micro-batches, right-padded (the golden pads to the longest row; padding is
/// masked, so the multiple does not change the loss).
fn micro_batches(g: &Golden) -> Vec<MicroBatch> {
    let rows = examples(g);
    g.json["micro_batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|mb| {
            let picked: Vec<&Example> = mb.as_array().unwrap().iter().map(|i| &rows[i.as_u64().unwrap() as usize]).collect();
            micro_batch(&picked, 8).unwrap()
        })
        .collect()
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-30f32, |m, x| m.max(x.abs()));
    a.iter().zip(&b).map(|(x, y)| (x - y).abs() / scale).fold(0.0, f32::max)
}

#[test]
fn loss_and_gradients_equal_peft() {
    let g = golden();
    let (m, vars) = model(&g);
    let mbs = micro_batches(&g);
    let want = g.json["losses"][0].as_array().unwrap();
    let mut sums: HashMap<String, Tensor> = HashMap::new();
    for (mb, w) in mbs.iter().zip(want) {
        let loss = micro_batch_loss(&m, mb).unwrap();
        let got = loss.to_scalar::<f32>().unwrap() as f64;
        assert!((got - w.as_f64().unwrap()).abs() < 2e-6 * got.abs(), "loss {got} vs {w}");
        let store = (loss / mbs.len() as f64).unwrap().backward().unwrap();
        for (name, var) in &vars {
            let gr = store.get(var.as_tensor()).unwrap().clone();
            let acc = match sums.remove(name) {
                Some(s) => (s + gr).unwrap(),
                None => gr,
            };
            sums.insert(name.clone(), acc);
        }
    }
    let want = with(&g, "grad.");
    assert_eq!(want.len(), vars.len());
    for (name, grad) in &sums {
        let d = max_rel_diff(grad, &want[name]);
        assert!(d < 1e-4, "{name}: {d}");
    }
    // The base weights got no gradient: they are not variables.
    assert!(!m.layers[0].attn.q.track_op());
}

#[test]
fn four_adamw_steps_equal_torch_and_the_merge_equals_peft() {
    let g = golden();
    let (mut m, vars) = model(&g);
    let mbs = micro_batches(&g);
    let setup = &g.json["setup"];
    let cfg = StepConfig {
        peak_lr: setup["lr"].as_f64().unwrap(),
        warmup_steps: setup["warmup"].as_u64().unwrap(),
        total_steps: setup["steps"].as_u64().unwrap(),
        accumulation: mbs.len(),
        max_grad_norm: Some(setup["clip"].as_f64().unwrap()),
        seed: 0,
    };
    let var_list: Vec<_> = vars.iter().map(|(_, v)| v.clone()).collect();
    let adamw = AdamWConfig { weight_decay: setup["weight_decay"].as_f64().unwrap(), ..Default::default() };
    let mut opt = AdamW::new(var_list.clone(), adamw).unwrap();
    let micro: Vec<(usize, &MicroBatch)> = mbs.iter().enumerate().collect();
    for step in 0..cfg.total_steps {
        let stats = train_step(&m, &var_list, &mut opt, &micro, step, &cfg, &mut TrainGroups { data: &mut SingleRank, pipeline: &mut SingleRank }).unwrap();
        let want_lr = g.json["lrs"][step as usize].as_f64().unwrap();
        assert!((stats.lr - want_lr).abs() < 1e-15, "step {step}: lr {} vs {want_lr}", stats.lr);
        let want_norm = g.json["grad_norms"][step as usize].as_f64().unwrap();
        assert!((stats.grad_norm - want_norm).abs() < 1e-5 * want_norm, "step {step}: norm {} vs {want_norm}", stats.grad_norm);
        for (i, loss) in stats.losses {
            let w = g.json["losses"][step as usize][i].as_f64().unwrap();
            assert!((loss - w).abs() < 1e-5 * w, "step {step} micro-batch {i}: {loss} vs {w}");
        }
    }
    let want = with(&g, "final.");
    for (name, var) in &vars {
        let d = max_rel_diff(var.as_tensor(), &want[name]);
        assert!(d < 1e-4, "{name} after 4 steps: {d}");
    }

    // Export as PEFT does: the same tensor names and configuration.
    let tmp = tempfile::tempdir().unwrap();
    peft::write(tmp.path(), &config(), "tiny_gqa", &vars).unwrap();
    let saved = candle_core::safetensors::load(tmp.path().join(peft::WEIGHTS_FILE), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = saved.keys().collect();
    names.sort();
    let want_names: Vec<String> = g.json["peft_tensor_names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(names, want_names.iter().collect::<Vec<_>>());
    let cfg_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join(peft::CONFIG_FILE)).unwrap()).unwrap();
    for (k, v) in g.json["peft_config"].as_object().unwrap() {
        assert_eq!(&cfg_json[k], v, "adapter_config.json `{k}`");
    }
    let (read_cfg, read) = peft::read(tmp.path()).unwrap();
    assert_eq!(read_cfg, config());
    assert_eq!(read.len(), vars.len());

    // The merge: W + (α/r)·B·A, then the plain model computes what the adapted one did.
    let rows = examples(&g);
    let all = micro_batch(&rows.iter().collect::<Vec<_>>(), 8).unwrap();
    let before = micro_batch_loss(&m, &all).unwrap().to_scalar::<f32>().unwrap();
    lora::merge(&mut m).unwrap();
    assert!(m.layers.iter().all(|l| l.lora.is_none()));
    let after = micro_batch_loss(&m, &all).unwrap().to_scalar::<f32>().unwrap();
    let want_loss = g.json["merged_loss_all_rows"].as_f64().unwrap() as f32;
    assert!((after - want_loss).abs() < 1e-4 * want_loss, "merged loss {after} vs {want_loss}");
    assert!((after - before).abs() < 1e-5 * before, "merged {after} vs adapted {before}");
    let weights = m.weights_by_name();
    for (name, w) in with(&g, "merged.") {
        let d = max_rel_diff(&weights[&name], &w);
        assert!(d < 1e-5, "{name}: {d}");
    }
}

/// LoRA on a bf16 base, as GPU workers train: the adapters stay f32 master weights (cast to
/// bf16 for their products), their gradients and AdamW's moments are f32, and loss and
/// gradients stay near PEFT's float64 golden within bf16's rounding of the forward pass.
#[test]
fn a_bf16_base_trains_f32_adapters_near_peft() {
    let g = golden();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_model_dir("tiny_gqa", tmp.path());
    let half = |s: &llmprune_shared::ModelSpec| LoadOptions { dtype: candle_core::DType::BF16, ..LoadOptions::full(s) };
    let mut m = load_model(&dir, half, &Device::Cpu).unwrap().model;
    let vars = lora::attach_from(&mut m, &config(), &with(&g, "init.")).unwrap();
    assert!(vars.iter().all(|(_, v)| v.as_tensor().dtype() == candle_core::DType::F32));
    let mbs = micro_batches(&g);
    let mut sums: HashMap<String, Tensor> = HashMap::new();
    for (mb, want) in mbs.iter().zip(g.json["losses"][0].as_array().unwrap()) {
        let loss = micro_batch_loss(&m, mb).unwrap();
        let got = loss.to_dtype(candle_core::DType::F64).unwrap().to_scalar::<f64>().unwrap();
        let want = want.as_f64().unwrap();
        assert!((got - want).abs() < 2e-2 * want, "bf16 loss {got} vs PEFT {want}");
        let store = (loss / mbs.len() as f64).unwrap().backward().unwrap();
        for (name, var) in &vars {
            let gr = store.get(var.as_tensor()).unwrap().clone();
            assert_eq!(gr.dtype(), candle_core::DType::F32, "{name}");
            let acc = match sums.remove(name) {
                Some(s) => (s + gr).unwrap(),
                None => gr,
            };
            sums.insert(name.clone(), acc);
        }
    }
    let want = with(&g, "grad.");
    let worst = sums.iter().map(|(name, grad)| llmprune_tests::rel_err(grad, &want[name])).fold(0f64, f64::max);
    eprintln!("bf16 base: worst relative error of the adapter gradients {worst:.2e}");
    assert!(worst < 5e-2, "adapter gradients on a bf16 base: relative error {worst}");

    let var_list: Vec<_> = vars.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = AdamW::new(var_list.clone(), AdamWConfig::default()).unwrap();
    let cfg = StepConfig { peak_lr: 1e-3, warmup_steps: 0, total_steps: 1, accumulation: mbs.len(), max_grad_norm: Some(1.0), seed: 0 };
    let micro: Vec<(usize, &MicroBatch)> = mbs.iter().enumerate().collect();
    train_step(&m, &var_list, &mut opt, &micro, 0, &cfg, &mut TrainGroups { data: &mut SingleRank, pipeline: &mut SingleRank }).unwrap();
    assert!(opt.m.iter().chain(&opt.v).all(|t| t.dtype() == candle_core::DType::F32), "AdamW moments in f32");
    assert!(var_list.iter().all(|v| v.as_tensor().dtype() == candle_core::DType::F32), "adapters stay f32");
    let moved = var_list.iter().zip(&vars).any(|(v, (name, _))| llmprune_tests::rel_err(v.as_tensor(), &with(&g, "init.")[name]) > 0.0);
    assert!(moved, "the step changed the adapters");
}
