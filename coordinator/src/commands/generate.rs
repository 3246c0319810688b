//! `llmprune generate`: sample continuations, as the paper shows for pruned models (Table 11,
//! appendix D), on the run's workers (one in this process by default).

use crate::cli::GenerateArgs;
use crate::cluster::driver::Cluster;
use crate::cluster::generate::generate_on_cluster;
use crate::cluster::load::ModelFiles;
use crate::commands::cluster::on_cluster;
use crate::commands::write_json_atomic;
use crate::fetch::resolve_model;
use crate::settings::Settings;
use anyhow::{anyhow, bail, Context, Result};
use llmprune_shared::proto::GenerateRequest;
use llmprune_worker::generate::Sampling;
use llmprune_worker::loader::{model_checksum, open_model};
use serde_json::json;

pub fn run(settings: &Settings, run_id: &str, args: GenerateArgs) -> Result<()> {
    let span = tracing::info_span!("generate", run_id, phase = "generating", rank = 0);
    let _enter = span.enter();
    let sampling = Sampling { max_new_tokens: args.max_new_tokens, temperature: args.temperature, top_k: args.top_k, top_p: args.top_p, seed: args.seed };
    sampling.validate().map_err(crate::commands::in_flags)?;
    args.cluster.check()?;
    if args.cluster.replicas != 1 || args.cluster.resume {
        bail!("generate: --replicas and --resume do not apply (every worker holds the whole model)");
    }
    let narrow = |flag: &str, v: usize| u32::try_from(v).map_err(|_| anyhow!("{flag} {v}: too large"));
    let req = GenerateRequest {
        prompts: args.prompt.clone(),
        max_new_tokens: narrow("--max-new-tokens", args.max_new_tokens)?,
        temperature: args.temperature,
        top_k: narrow("--top-k", args.top_k)?,
        top_p: args.top_p,
        seed: args.seed,
    };
    let model_path = resolve_model(&args.model, &settings.cache_dir, &settings.python)?;
    let spec = open_model(&model_path).with_context(|| format!("opening {}", model_path.display()))?.spec;
    let sha = model_checksum(&model_path)?;
    let model = ModelFiles { spec: &spec, path: &model_path, sha256: &sha, dtype: args.dtype };
    let done = on_cluster(None, settings, &args.cluster, run_id, async |cluster: &mut Cluster| generate_on_cluster(cluster, model, &req).await)?;
    let mut cases = Vec::new();
    for (prompt, c) in args.prompt.iter().zip(&done.continuations) {
        println!("{prompt}{}\n", c.text);
        cases.push(json!({"prompt": prompt, "continuation": c.text, "seconds": c.seconds}));
    }
    if let Some(path) = &args.json {
        let doc = json!({"model": model_path.display().to_string(), "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                         "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed, "workers": done.ranks.len(), "seconds": {"load": done.load_s}, "cases": cases});
        write_json_atomic(path, &doc)?;
    }
    Ok(())
}
