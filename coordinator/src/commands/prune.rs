//! `llmprune prune`: one-process pruning of a model into a new model directory with its
//! `plan.json` and `prune_report.json`.

use crate::cli::{CriterionArg, PruneArgs, ReductionArg, ScopeArg, StrategyArg};
use crate::fetch::resolve_model;
use crate::settings::Settings;
use anyhow::{anyhow, Context, Result};
use candle_core::Device;
use clap::ValueEnum;
use llmprune_worker::calibration::{read_rows, read_token_ids, sample_windows};
use llmprune_worker::export::export_model;
use llmprune_worker::prune::importance::{Criterion, Reduction};
use llmprune_worker::prune::pipeline::{prune, Importance, PruneRequest, Scope, Strategy};
use llmprune_worker::loader::InMemoryWeights;
use llmprune_worker::{load_model, LlamaModel, LoadOptions};
use serde_json::json;
use std::ops::Range;
use std::time::Instant;

/// `START:END` (end exclusive) within `n` layers; `None` is all of them, `N:N` none.
fn layer_range(flag: &str, value: Option<&str>, n: usize) -> Result<Range<usize>> {
    let Some(v) = value else { return Ok(0..n) };
    let parsed = v.split_once(':').and_then(|(a, b)| Some((a.trim().parse::<usize>().ok()?, b.trim().parse::<usize>().ok()?)));
    let (start, end) = parsed.ok_or_else(|| anyhow!("{flag} {v}: expected START:END, e.g. 3:27"))?;
    if start > end || end > n {
        return Err(anyhow!("{flag} {v}: must satisfy START <= END <= {n} (the model's layers)"));
    }
    Ok(start..end)
}

fn importance(args: &PruneArgs) -> Importance {
    let criterion = match args.criterion {
        CriterionArg::Random => return Importance::Random,
        CriterionArg::L1 => Criterion::L1,
        CriterionArg::L2 => Criterion::L2,
        CriterionArg::Vectorize => Criterion::Vectorize,
        CriterionArg::ParamFirst => Criterion::ParamFirst,
        CriterionArg::ParamSecond => Criterion::ParamSecond,
        CriterionArg::ParamMix => Criterion::ParamMix,
    };
    // The reference reduces magnitude scores with `mean`, Taylor scores with `sum`.
    let default = if criterion.needs_gradient() { Reduction::Sum } else { Reduction::Mean };
    let reduction = match args.reduction {
        None => default,
        Some(ReductionArg::Sum) => Reduction::Sum,
        Some(ReductionArg::Mean) => Reduction::Mean,
        Some(ReductionArg::Max) => Reduction::Max,
        Some(ReductionArg::Prod) => Reduction::Prod,
        Some(ReductionArg::First) => Reduction::First,
        Some(ReductionArg::Last) => Reduction::Last,
    };
    Importance::Scored(criterion, reduction)
}

pub fn run(settings: &Settings, run_id: &str, args: PruneArgs) -> Result<()> {
    let span = tracing::info_span!("prune", run_id, phase = "prune", rank = 0);
    let _enter = span.enter();
    if !(args.ratio > 0.0 && args.ratio < 1.0) {
        return Err(anyhow!("--ratio {}: must be in (0, 1)", args.ratio));
    }
    if args.out.exists() {
        return Err(anyhow!("--out {}: already exists; remove it or choose another directory", args.out.display()));
    }
    let eval_data = match &args.eval_ppl {
        Some(list) => {
            let pairs: Vec<String> = list.split(',').map(str::to_string).collect();
            crate::commands::ppl::parse_data(&pairs).map_err(|e| anyhow!("--eval-ppl: {e:#}"))?
        }
        None => Vec::new(),
    };
    if args.eval_seq_len < 2 {
        return Err(anyhow!("--eval-seq-len must be at least 2, got {}", args.eval_seq_len));
    }
    if args.calibration.is_empty() && args.calibration_ids.is_none() {
        return Err(anyhow!("give calibration data: --calibration FILE (text) or --calibration-ids FILE"));
    }
    let model_path = resolve_model(&args.model, &settings.cache_dir, &settings.python)?;
    let t0 = Instant::now();
    let mut loaded = load_model(&model_path, LoadOptions::full, &Device::Cpu).with_context(|| format!("loading {}", model_path.display()))?;
    let n = loaded.model.spec.n_layers();
    let attn_layers = layer_range("--attn-layers", args.attn_layers.as_deref(), n)?;
    let mlp_layers = layer_range("--mlp-layers", args.mlp_layers.as_deref(), n)?;
    let (windows, calibration) = match &args.calibration_ids {
        Some(path) => {
            let w = read_token_ids(path, loaded.model.spec.vocab_size)?;
            (w, json!({"ids": path.display().to_string()}))
        }
        None => {
            let rows = read_rows(&args.calibration)?;
            let w = sample_windows(&rows, &loaded.tokenizer, args.samples, args.seq_len, args.seed)?;
            let files: Vec<String> = args.calibration.iter().map(|p| p.display().to_string()).collect();
            let w: Vec<Vec<u32>> = w.into_iter().map(|w| w.ids).collect();
            (w, json!({"text": files, "samples": args.samples, "seq_len": args.seq_len, "seed": args.seed}))
        }
    };
    let req = PruneRequest {
        strategy: match args.strategy {
            StrategyArg::Block => Strategy::Block,
            StrategyArg::Channel => Strategy::Channel,
        },
        ratio: args.ratio,
        attn_layers: attn_layers.clone(),
        mlp_layers: mlp_layers.clone(),
        importance: importance(&args),
        scope: match args.scope {
            ScopeArg::Local => Scope::Local,
            ScopeArg::Global => Scope::Global { normalize: args.normalize },
        },
        seed: args.seed,
    };
    let params_before = loaded.model.spec.n_params();
    let outcome = prune(&mut loaded.model, &windows, &req)?;
    let params_after = outcome.spec.n_params();
    let [gradients_s, scoring_s, slicing_s] = outcome.seconds;
    let name = |v: Option<clap::builder::PossibleValue>| v.map(|v| v.get_name().to_string());
    let criterion = name(args.criterion.to_possible_value());
    let reduction = match req.importance {
        Importance::Scored(_, r) => Some(format!("{r:?}").to_lowercase()),
        Importance::Random => None,
    };
    let settings_json = json!({
        "model": model_path.display().to_string(),
        "strategy": format!("{:?}", args.strategy).to_lowercase(),
        "ratio": args.ratio,
        "attn_layers": [attn_layers.start, attn_layers.end],
        "mlp_layers": [mlp_layers.start, mlp_layers.end],
        "criterion": criterion,
        "reduction": reduction,
        "scope": name(args.scope.to_possible_value()),
        "normalize": args.normalize,
        "calibration": calibration,
    });
    let plan = json!({"settings": settings_json, "groups": outcome.groups});
    let ppl = if eval_data.is_empty() {
        serde_json::Map::new()
    } else {
        let source = InMemoryWeights { label: "pruned model".into(), tensors: outcome.weights.clone() };
        let pruned = LlamaModel::load(outcome.spec.clone(), &source, &LoadOptions::full(&outcome.spec), &Device::Cpu)?;
        crate::commands::ppl::perplexities(&pruned, &loaded.tokenizer, &eval_data, args.eval_seq_len, 4, args.eval_max_chunks)?
    };
    // The paper's Table 3 columns that need no timing: parameters, MACs of one 64-token
    // sequence, f32 weight memory.
    let table3 = |spec: &llmprune_shared::ModelSpec| {
        json!({"params": spec.n_params(), "macs_64_tokens": spec.forward_flops(1, 64) / 2.0,
               "weight_mib_f32": spec.n_params() as f64 * 4.0 / (1 << 20) as f64})
    };
    let report = json!({
        "ppl": ppl,
        "statistics": {"before": table3(&loaded.model.spec), "after": table3(&outcome.spec)},
        "params_before": params_before,
        "params_after": params_after,
        "criterion": criterion,
        "ratio": args.ratio,
        "seconds": {"load_and_calibration": t0.elapsed().as_secs_f64() - gradients_s - scoring_s - slicing_s,
                    "gradients": gradients_s, "scoring": scoring_s, "slicing": slicing_s},
    });
    export_model(&args.out, &outcome.spec, &outcome.weights, &loaded.tokenizer, &[("plan.json", &plan), ("prune_report.json", &report)])?;
    tracing::info!(params_before, params_after, gradients_s, scoring_s, slicing_s, out = %args.out.display(), "pruned");
    println!("parameters {params_before} -> {params_after} ({:.2}%)", 100.0 * params_after as f64 / params_before as f64);
    println!("{:>8} {:>6} {:>6}", "layer", "heads", "mlp");
    for (i, l) in outcome.spec.layers.iter().enumerate() {
        println!("{i:>8} {:>6} {:>6}", l.n_heads, l.intermediate_size);
    }
    println!("model: {}", args.out.display());
    Ok(())
}
