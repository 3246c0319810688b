//! `llmprune synth`: a model of a real architecture (SmolLM2, LLaMA-7B, LLaMA-13B) with seeded
//! random weights, for speed and memory tests where no checkpoint is at hand.

use crate::cli::SynthArgs;
use anyhow::{anyhow, Result};
use llmprune_worker::synth::synthesize;
use std::time::Instant;

pub fn run(args: SynthArgs) -> Result<()> {
    if args.out.exists() {
        return Err(anyhow!("--out {}: already exists; remove it or choose another directory", args.out.display()));
    }
    let t = Instant::now();
    let params = synthesize(&args.out, args.shape, args.dtype, args.seed, args.max_shard_size)?;
    println!(
        "{} with random weights (seed {}, {}): {params} parameters in {:.1} s (speed and memory tests only)",
        args.shape.name(),
        args.seed,
        args.dtype.name(),
        t.elapsed().as_secs_f64()
    );
    println!("model: {}", args.out.display());
    Ok(())
}
