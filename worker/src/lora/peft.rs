//! Adapters in PEFT's on-disk layout: `adapter_config.json` and `adapter_model.safetensors`
//! with PEFT's tensor names, so `PeftModel.from_pretrained` loads what we train (and we load
//! what PEFT saved).

use super::{LoraConfig, Projection};
use crate::error::{Error, Result};
use candle_core::{Tensor, Var};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// `adapter_config.json` for `config` on the model at `base_model`.
pub fn adapter_config(config: &LoraConfig, base_model: &str) -> Value {
    let alpha = if config.alpha.fract() == 0.0 { json!(config.alpha as i64) } else { json!(config.alpha) };
    let mut targets: Vec<&str> = config.targets.iter().map(|p| p.name()).collect();
    targets.sort();
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.r,
        "lora_alpha": alpha,
        "lora_dropout": config.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null
    })
}

/// Writes the adapter's two files into `dir` (which exists).
pub fn write(dir: &Path, config: &LoraConfig, base_model: &str, vars: &[(String, Var)]) -> Result<()> {
    write_tensors(&dir.join(WEIGHTS_FILE), vars)?;
    write_config(dir, config, base_model)
}

/// The adapter matrices alone, by PEFT name, into one safetensors file.
pub fn write_tensors(path: &Path, vars: &[(String, Var)]) -> Result<()> {
    let tensors: HashMap<String, Tensor> = vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    candle_core::safetensors::save(&tensors, path).map_err(|e| Error::file(path, e))
}

/// `adapter_config.json` into `dir`.
pub fn write_config(dir: &Path, config: &LoraConfig, base_model: &str) -> Result<()> {
    let path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&adapter_config(config, base_model)).map_err(|e| Error::file(&path, e))?;
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))
}

/// Joins the adapter parts that pipeline stages wrote into `dir` (disjoint layers) into the
/// adapter's two files, and removes the parts.
pub fn join_parts(dir: &Path, parts: &[String], config: &LoraConfig, base_model: &str) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for part in parts {
        let path = dir.join(part);
        for (name, t) in candle_core::safetensors::load(&path, &candle_core::Device::Cpu).map_err(|e| Error::file(&path, e))? {
            if tensors.insert(name.clone(), t).is_some() {
                return Err(Error::file(&path, format!("`{name}` is in two stages' adapters")));
            }
        }
    }
    let weights = dir.join(WEIGHTS_FILE);
    candle_core::safetensors::save(&tensors, &weights).map_err(|e| Error::file(&weights, e))?;
    write_config(dir, config, base_model)?;
    for part in parts {
        let path = dir.join(part);
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// Reads an adapter directory: its configuration and matrices by PEFT name.
pub fn read(dir: &Path) -> Result<(LoraConfig, HashMap<String, Tensor>)> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::file(&path, e))?;
    let field = |k: &str| v.get(k).ok_or_else(|| Error::file(&path, format!("missing `{k}`")));
    if field("peft_type")?.as_str() != Some("LORA") {
        return Err(Error::file(&path, "peft_type: only LORA adapters are supported"));
    }
    if v.get("use_dora").and_then(Value::as_bool) == Some(true) || v.get("use_rslora").and_then(Value::as_bool) == Some(true) {
        return Err(Error::file(&path, "DoRA and rsLoRA adapters are not supported"));
    }
    let r = field("r")?.as_u64().ok_or_else(|| Error::file(&path, "r: expected a positive integer"))? as usize;
    let alpha = field("lora_alpha")?.as_f64().ok_or_else(|| Error::file(&path, "lora_alpha: expected a number"))?;
    let dropout = v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0) as f32;
    let targets = match field("target_modules")? {
        Value::Array(a) => a
            .iter()
            .map(|t| {
                t.as_str()
                    .ok_or_else(|| Error::file(&path, "target_modules: expected names"))
                    .and_then(|n| Projection::from_name(n).map_err(|e| Error::file(&path, e)))
            })
            .collect::<Result<Vec<_>>>()?,
        _ => return Err(Error::file(&path, "target_modules: expected a list of projection names")),
    };
    let mut targets = targets;
    targets.sort();
    targets.dedup();
    let config = LoraConfig { r, alpha, dropout, targets };
    config.validate().map_err(|e| Error::file(&path, e))?;
    let weights = dir.join(WEIGHTS_FILE);
    let tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).map_err(|e| Error::file(&weights, e))?;
    Ok((config, tensors))
}
