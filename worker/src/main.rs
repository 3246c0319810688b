//! `llmprune-worker`: the process that owns a device and a model shard.
//!
//! The cluster protocol (register, load a shard, run phases) arrives with the cluster
//! runtime; today the binary can inspect a model the way a worker will load it.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use llmprune_worker::loader::open_model;
use std::path::PathBuf;

#[global_allocator]
static ALLOCATOR: llmprune_worker::memory::MiMalloc = llmprune_worker::memory::MiMalloc;

#[derive(Parser)]
#[command(name = "llmprune-worker", version, about = "llmprune worker process")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open a model (Hugging Face directory or GGUF) and print its per-layer shapes.
    Inspect {
        #[arg(long)]
        model: PathBuf,
    },
}

fn main() -> Result<()> {
    llmprune_worker::memory::configure_allocator();
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    match Cli::parse().command {
        Command::Inspect { model } => {
            let opened = open_model(&model).with_context(|| format!("opening {}", model.display()))?;
            println!("{}", serde_json::to_string_pretty(&opened.spec)?);
            println!("parameters: {}", opened.spec.n_params());
            println!("tensors: {}", opened.weights.names().len());
        }
    }
    Ok(())
}
