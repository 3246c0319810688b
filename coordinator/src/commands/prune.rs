//! `llmprune prune`: one-process pruning of a model into a new model directory with its
//! `plan.json` and `prune_report.json`.

use crate::cli::{CriterionArg, GqaArg, PruneArgs, ReductionArg, ScopeArg, StrategyArg};
use crate::fetch::resolve_model;
use crate::settings::Settings;
use anyhow::{anyhow, Context, Result};
use candle_core::Device;
use clap::ValueEnum;
use llmprune_shared::plan::{Plan, PlanModel};
use llmprune_shared::{ModelSpec, PyRandom};
use llmprune_worker::calibration::{read_rows, read_token_ids, sample_windows_with};
use llmprune_worker::export::export_model;
use llmprune_worker::loader::{model_checksum, InMemoryWeights};
use llmprune_worker::prune::importance::{Criterion, Reduction};
use llmprune_worker::prune::pipeline::{prune, Calibration, GqaMode, Importance, PruneRequest, Scope, Strategy};
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

/// The paper's Table 3 columns that need no timing: parameters, MACs of one 64-token
/// sequence, f32 weight memory.
pub(crate) fn table3(spec: &ModelSpec) -> serde_json::Value {
    json!({"params": spec.n_params(), "macs_64_tokens": spec.forward_flops(1, 64) / 2.0,
           "weight_mib_f32": spec.n_params() as f64 * 4.0 / (1 << 20) as f64})
}

/// Prints the parameter change and each layer's widths.
pub(crate) fn print_shapes(before: &ModelSpec, after: &ModelSpec) {
    let (b, a) = (before.n_params(), after.n_params());
    println!("parameters {b} -> {a} ({:.2}%), hidden {} -> {}", 100.0 * a as f64 / b as f64, before.hidden_size, after.hidden_size);
    println!("{:>8} {:>6} {:>8} {:>6}", "layer", "heads", "kv heads", "mlp");
    for (i, l) in after.layers.iter().enumerate() {
        println!("{i:>8} {:>6} {:>8} {:>6}", l.n_heads, l.n_kv_heads, l.intermediate_size);
    }
}

pub fn run(settings: &Settings, run_id: &str, args: PruneArgs) -> Result<()> {
    let span = tracing::info_span!("prune", run_id, phase = "prune", rank = 0);
    let _enter = span.enter();
    if !(args.ratio > 0.0 && args.ratio < 1.0) {
        return Err(anyhow!("--ratio {}: must be in (0, 1)", args.ratio));
    }
    if args.iterative_steps == 0 {
        return Err(anyhow!("--iterative-steps must be at least 1"));
    }
    if args.round_to == 0 {
        return Err(anyhow!("--round-to must be at least 1"));
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
    let needs_calibration = importance(&args) != Importance::Random && !matches!(args.criterion, CriterionArg::L1 | CriterionArg::L2);
    if needs_calibration && args.calibration.is_empty() && args.calibration_ids.is_none() {
        return Err(anyhow!("--criterion {:?} needs calibration data: --calibration FILE (text) or --calibration-ids FILE", args.criterion));
    }
    let model_path = resolve_model(&args.model, &settings.cache_dir, &settings.python)?;
    let t0 = Instant::now();
    let loaded = load_model(&model_path, LoadOptions::full, &Device::Cpu).with_context(|| format!("loading {}", model_path.display()))?;
    let checksum = model_checksum(&model_path)?;
    let n = loaded.model.spec.n_layers();
    let attn_layers = layer_range("--attn-layers", args.attn_layers.as_deref(), n)?;
    let mlp_layers = layer_range("--mlp-layers", args.mlp_layers.as_deref(), n)?;
    let layers = layer_range("--layers", args.layers.as_deref(), n)?;
    let tokenizer = loaded.tokenizer;
    let spec_before = loaded.model.spec.clone();
    let (mut calibration, calibration_json): (Box<Calibration>, _) = match &args.calibration_ids {
        Some(path) => {
            let w = read_token_ids(path, spec_before.vocab_size)?;
            // Verbatim windows: every step uses them.
            (Box::new(move |_step| Ok(w.clone())), json!({"ids": path.display().to_string()}))
        }
        None if !args.calibration.is_empty() => {
            let rows = read_rows(&args.calibration)?;
            let files: Vec<String> = args.calibration.iter().map(|p| p.display().to_string()).collect();
            let (samples, seq_len) = (args.samples, args.seq_len);
            // One seeded stream for all steps: each step draws fresh windows, as the reference.
            let mut rng = PyRandom::new(args.seed);
            let tokenizer = &tokenizer;
            let draw = move |_step| Ok(sample_windows_with(&rows, tokenizer, samples, seq_len, &mut rng)?.into_iter().map(|w| w.ids).collect());
            (Box::new(draw), json!({"text": files, "samples": args.samples, "seq_len": args.seq_len, "seed": args.seed}))
        }
        None => (Box::new(|_step| Ok(Vec::new())), serde_json::Value::Null),
    };
    let req = PruneRequest {
        strategy: match args.strategy {
            StrategyArg::Block => Strategy::Block,
            StrategyArg::Channel => Strategy::Channel,
            StrategyArg::Layer => Strategy::Layer,
        },
        ratio: args.ratio,
        attn_layers: attn_layers.clone(),
        mlp_layers: mlp_layers.clone(),
        layers: layers.clone(),
        importance: importance(&args),
        scope: match args.scope {
            ScopeArg::Local => Scope::Local,
            ScopeArg::Global => Scope::Global { normalize: args.normalize },
        },
        gqa: match args.gqa {
            GqaArg::KvGroups => GqaMode::KvGroups,
            GqaArg::QueryHeads => GqaMode::QueryHeads,
        },
        round_to: args.round_to,
        steps: args.iterative_steps,
        seed: args.seed,
    };
    let latency_data = eval_data.first().filter(|_| args.latency_chunks > 0);
    let latency_before = match latency_data {
        Some((kind, path)) => Some(crate::commands::ppl::latency(&loaded.model, &tokenizer, *kind, path, args.eval_seq_len, args.latency_chunks)?),
        None => None,
    };
    let load_s = t0.elapsed().as_secs_f64();
    let outcome = prune(loaded.model, &mut *calibration, &req)?;
    let [gradients_s, scoring_s, slicing_s] = outcome.seconds;
    let name = |v: Option<clap::builder::PossibleValue>| v.map(|v| v.get_name().to_string());
    let criterion = name(args.criterion.to_possible_value());
    let reduction = match req.importance {
        Importance::Scored(_, r) => Some(format!("{r:?}").to_lowercase()),
        Importance::Random => None,
    };
    let settings_json = json!({
        "strategy": name(args.strategy.to_possible_value()),
        "ratio": args.ratio,
        "attn_layers": [attn_layers.start, attn_layers.end],
        "mlp_layers": [mlp_layers.start, mlp_layers.end],
        "layers": [layers.start, layers.end],
        "criterion": criterion,
        "reduction": reduction,
        "scope": name(args.scope.to_possible_value()),
        "normalize": args.normalize,
        "gqa": name(args.gqa.to_possible_value()),
        "round_to": args.round_to,
        "iterative_steps": args.iterative_steps,
        "seed": args.seed,
        "calibration": calibration_json,
    });
    let model = PlanModel { path: model_path.display().to_string(), sha256: checksum, params: spec_before.n_params() };
    let plan = Plan::new(model, settings_json, outcome.steps);
    let (ppl, latency_after) = if eval_data.is_empty() {
        (serde_json::Map::new(), None)
    } else {
        let source = InMemoryWeights { label: "pruned model".into(), tensors: outcome.weights.clone() };
        let pruned = LlamaModel::load(outcome.spec.clone(), &source, &LoadOptions::full(&outcome.spec), &Device::Cpu)?;
        let latency = match latency_data {
            Some((kind, path)) => Some(crate::commands::ppl::latency(&pruned, &tokenizer, *kind, path, args.eval_seq_len, args.latency_chunks)?),
            None => None,
        };
        let ppl = crate::commands::ppl::perplexities(&pruned, &tokenizer, &eval_data, args.eval_seq_len, 4, args.eval_max_chunks)?;
        (ppl, latency)
    };
    let mut before = table3(&spec_before);
    let mut after = table3(&outcome.spec);
    if let (Some(b), Some(a), Some((kind, _))) = (latency_before, latency_after, latency_data) {
        let what = json!({"dataset": kind.name(), "chunks": args.latency_chunks, "seq_len": args.eval_seq_len, "batch": 1});
        before["latency_s_per_chunk"] = json!(b);
        after["latency_s_per_chunk"] = json!(a);
        before["latency_measured_on"] = what.clone();
        after["latency_measured_on"] = what;
    }
    let report = json!({
        "ppl": ppl,
        "statistics": {"before": before, "after": after},
        "params_before": spec_before.n_params(),
        "params_after": outcome.spec.n_params(),
        "criterion": criterion,
        "ratio": args.ratio,
        "seconds": {"load_and_calibration": load_s, "gradients": gradients_s, "scoring": scoring_s, "slicing": slicing_s},
    });
    let plan_json = serde_json::to_value(&plan)?;
    let reports = [("plan.json", &plan_json), ("prune_report.json", &report)];
    export_model(&args.out, &outcome.spec, &outcome.weights, &tokenizer, &reports, args.output.max_shard_size)?;
    tracing::info!(params_before = spec_before.n_params(), params_after = outcome.spec.n_params(), gradients_s, scoring_s, slicing_s, out = %args.out.display(), "pruned");
    print_shapes(&spec_before, &outcome.spec);
    println!("model: {}", args.out.display());
    Ok(())
}
