//! Forward / forward+backward benchmark of a whole model in differentiable mode, the
//! same computation as `bench/torch_fwd_bwd.py` (see `bench/fwd_bwd.sh` for the ratio).

use crate::cli::{BenchArgs, BenchMode};
use crate::fetch::resolve_model;
use crate::settings::Settings;
use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device, Tensor};
use llmprune_shared::dtype::WeightDtype;
use llmprune_worker::calibration::read_token_ids;
use llmprune_worker::eval::perplexity::CorpusKind;
use llmprune_worker::memory::peak_rss_mb;
use llmprune_worker::model::candle_dtype;
use llmprune_worker::{load_model, Exec, LoadOptions};
use serde_json::json;
use std::time::Instant;

pub fn run(settings: &Settings, args: BenchArgs) -> Result<()> {
    let device = settings.compute_device()?;
    let dtype = args.dtype.unwrap_or_else(|| WeightDtype::default_for(device.is_cuda()));
    let model_path = resolve_model(&args.model, &settings.cache_dir, &settings.python)?;
    let mut loaded = load_model(&model_path, |spec| LoadOptions { dtype: candle_dtype(dtype), ..LoadOptions::full(spec) }, &device)?;
    // The input as `[batch, seq_len]` ids.
    let (ids, batch, seq_len) = match (&args.ids, &args.text) {
        (Some(path), _) => {
            let windows = read_token_ids(path, loaded.model.spec.vocab_size).map_err(|e| anyhow!("--ids {e}"))?;
            let seq_len = windows.first().map_or(0, Vec::len);
            (windows.concat(), windows.len(), seq_len)
        }
        (None, Some(text)) => {
            let raw = std::fs::read_to_string(text).with_context(|| format!("--text {}", text.display()))?;
            let ids = loaded.tokenizer.encode(&CorpusKind::Wikitext2.joined_text(&raw))?;
            let n = args.batch * args.seq_len;
            if ids.len() < n {
                return Err(anyhow!("--text {}: {} tokens, need {n}", text.display(), ids.len()));
            }
            (ids[..n].to_vec(), args.batch, args.seq_len)
        }
        (None, None) => return Err(anyhow!("--text or --ids names the input")),
    };
    let n = ids.len();
    let input = Tensor::from_vec(ids, (batch, seq_len), &device)?;
    let vars = loaded.model.make_trainable(|_| true)?;
    let model = &loaded.model;
    let step = || -> Result<f32> {
        let loss = model.loss(&input, Exec::Differentiable)?;
        if args.mode == BenchMode::Fwdbwd {
            let grads = loss.backward()?;
            // Every weight must have received a gradient, or the timing measures less work.
            if let Some((name, _)) = vars.iter().find(|(_, v)| grads.get(v.as_tensor()).is_none()) {
                return Err(anyhow!("no gradient for {name}"));
            }
        }
        // A GPU runs the step asynchronously: the time is the device's only once it is done.
        device.synchronize()?;
        Ok(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?)
    };
    // The warm-up step's loss: checked against the reference's on the same weights and tokens.
    let loss = step()?;
    let mut times = Vec::with_capacity(args.repeats);
    for _ in 0..args.repeats.max(1) {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    let passes = if args.mode == BenchMode::Fwdbwd { 3.0 } else { 1.0 };
    let flops = passes * model.spec.forward_flops(batch, seq_len);
    let peak = matmul_gflops(n, model.spec.hidden_size, candle_dtype(dtype), &device)?;
    let mode = match args.mode {
        BenchMode::Fwd => "fwd",
        BenchMode::Fwdbwd => "fwdbwd",
    };
    println!(
        "{}",
        json!({
            "impl": "llmprune", "mode": mode, "device": args_device(&device), "dtype": dtype.name(), "tokens": n, "loss": loss, "seconds": median,
            "tokens_per_s": n as f64 / median, "peak_rss_mb": peak_rss_mb(), "all_seconds": times,
            "gflop": flops / 1e9, "gflops": flops / 1e9 / median, "matmul_gflops": peak,
            "of_matmul_peak": flops / 1e9 / median / peak,
        })
    );
    Ok(())
}

/// What this machine's matmul sustains in the weights' dtype, in GFLOP/s: the physical
/// ceiling of a step that is all matmuls. Measured on a `[tokens, hidden] × [hidden, 4·hidden]`
/// product, the shape of an MLP projection, best of several runs.
fn matmul_gflops(tokens: usize, hidden: usize, dtype: DType, device: &Device) -> Result<f64> {
    let a = Tensor::ones((tokens, hidden), dtype, device)?;
    let b = Tensor::ones((hidden, 4 * hidden), dtype, device)?;
    let mut best = f64::INFINITY;
    for _ in 0..20 {
        let t = Instant::now();
        let _ = a.matmul(&b)?;
        device.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (tokens * hidden * 4 * hidden) as f64 / best / 1e9)
}

fn args_device(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        other => format!("{other:?}"),
    }
}
