//! `llmprune apply-plan`: replays a `plan.json` on the model it was made for, through the
//! same step application `prune` uses, so the output is the model `prune` wrote.

use crate::cli::ApplyPlanArgs;
use crate::fetch::resolve_model;
use crate::settings::Settings;
use anyhow::{anyhow, Context, Result};
use llmprune_shared::plan::Plan;
use llmprune_worker::export::export_model;
use llmprune_worker::loader::model_checksum;
use llmprune_worker::prune::apply::apply_step;
use llmprune_worker::{load_model, LoadOptions};
use serde_json::json;
use std::time::Instant;

pub fn run(settings: &Settings, run_id: &str, args: ApplyPlanArgs) -> Result<()> {
    let device = settings.compute_device()?;
    let span = tracing::info_span!("apply_plan", run_id, phase = "slicing", rank = 0);
    let _enter = span.enter();
    if args.out.exists() {
        return Err(anyhow!("--out {}: already exists; remove it or choose another directory", args.out.display()));
    }
    let text = std::fs::read_to_string(&args.plan).with_context(|| format!("--plan {}: cannot read", args.plan.display()))?;
    let plan = Plan::from_json(&text).map_err(|e| anyhow!("--plan {}: {e}", args.plan.display()))?;
    let model_path = resolve_model(&args.model, &settings.cache_dir, &settings.python)?;
    let checksum = model_checksum(&model_path)?;
    if checksum != plan.model.sha256 {
        return Err(anyhow!(
            "--plan {} was made for the model with sha256 {} ({}); --model {} has sha256 {checksum}",
            args.plan.display(),
            plan.model.sha256,
            plan.model.path,
            model_path.display()
        ));
    }
    let t = Instant::now();
    // Loaded exactly as `prune` loads it, so the replay starts from the same weights.
    let loaded = load_model(&model_path, LoadOptions::full, &device).with_context(|| format!("loading {}", model_path.display()))?;
    let before = loaded.model.spec.clone();
    let mut spec = before.clone();
    let mut weights = loaded.model.weights_by_name();
    for (k, step) in plan.steps.iter().enumerate() {
        let (s, w) = apply_step(&spec, &weights, step).map_err(|e| anyhow!("--plan {} step {}: {e}", args.plan.display(), k + 1))?;
        spec = s;
        weights = w;
    }
    let report = json!({
        "plan": args.plan.display().to_string(),
        "params_before": before.n_params(),
        "params_after": spec.n_params(),
        "statistics": {"before": crate::commands::prune::table3(&before), "after": crate::commands::prune::table3(&spec)},
        "seconds": t.elapsed().as_secs_f64(),
    });
    let plan_json = serde_json::to_value(&plan)?;
    let reports = [("plan.json", &plan_json), ("apply_report.json", &report)];
    export_model(&args.out, &spec, &weights, &loaded.tokenizer, &reports, args.output.max_shard_size)?;
    crate::commands::prune::print_shapes(&before, &spec);
    println!("model: {}", args.out.display());
    Ok(())
}
