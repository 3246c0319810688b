//! `llmprune generate`: sample continuations, as the paper shows for pruned models (Table 11,
//! appendix D), in this process.

use crate::cli::GenerateArgs;
use crate::commands::write_json_atomic;
use crate::fetch::resolve_model;
use crate::settings::Settings;
use anyhow::{Context, Result};
use llmprune_worker::generate::{generate, Sampling};
use llmprune_worker::{load_model, LoadOptions};
use serde_json::json;
use std::time::Instant;

pub fn run(settings: &Settings, args: GenerateArgs) -> Result<()> {
    let device = settings.compute_device()?;
    let sampling = Sampling { max_new_tokens: args.max_new_tokens, temperature: args.temperature, top_k: args.top_k, top_p: args.top_p, seed: args.seed };
    sampling.validate()?;
    let model_path = resolve_model(&args.model, &settings.cache_dir, &settings.python)?;
    let loaded = load_model(&model_path, LoadOptions::full, &device).with_context(|| format!("loading {}", model_path.display()))?;
    let mut cases = Vec::new();
    for prompt in &args.prompt {
        let t = Instant::now();
        let text = generate(&loaded.model, &loaded.tokenizer, prompt, &sampling)?;
        let seconds = t.elapsed().as_secs_f64();
        println!("{prompt}{text}\n");
        cases.push(json!({"prompt": prompt, "continuation": text, "seconds": seconds}));
    }
    if let Some(path) = &args.json {
        let doc = json!({"model": model_path.display().to_string(), "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                         "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed, "cases": cases});
        write_json_atomic(path, &doc)?;
    }
    Ok(())
}
