//! `llmprune`: the coordinator CLI.

mod cli;
mod cluster;
mod commands;
mod fetch;
mod interrupt;
mod progress;
mod report;
mod settings;
mod telemetry;

use anyhow::{Context, Result};
use clap::Parser;

#[global_allocator]
static ALLOCATOR: llmprune_worker::memory::MiMalloc = llmprune_worker::memory::MiMalloc;

fn main() -> std::process::ExitCode {
    llmprune_worker::memory::configure_allocator();
    match run(cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => match (interrupt::received(), interrupt::exit_code()) {
            (Some(signal), Some(code)) => {
                eprintln!(
                    "error: interrupted by {signal} ({e:#}): the workers were stopped and the partial output removed; checkpoints are kept: run the same command with --resume to continue"
                );
                std::process::ExitCode::from(code)
            }
            _ => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

fn run(cli: cli::Cli) -> Result<()> {
    let mut overrides = cli.global.overrides();
    if let cli::Command::Run(args) = &cli.command {
        overrides.sets.extend(args.overrides());
    }
    let settings = settings::Settings::load(&overrides)?;
    telemetry::init(settings.log_format);
    interrupt::install().context("watching for SIGINT and SIGTERM")?;
    let run_id = telemetry::new_run_id();
    match cli.command {
        cli::Command::Fetch(args) => commands::fetch::run(&settings, args),
        cli::Command::Ppl(args) => commands::ppl::run(&settings, &run_id, args),
        cli::Command::Bench(args) => commands::bench::run(&settings, args),
        cli::Command::Config(args) => commands::config::run(&settings, args),
        cli::Command::Synth(args) => commands::synth::run(args),
        cli::Command::Prune(args) => commands::prune::run(&settings, &run_id, args, None),
        cli::Command::ApplyPlan(args) => commands::apply_plan::run(&settings, &run_id, args),
        cli::Command::Recover(args) => commands::recover::run(&settings, &run_id, args, None),
        cli::Command::Eval(args) => commands::eval::run(&settings, &run_id, args, None),
        cli::Command::Table(args) => commands::table::run(args),
        cli::Command::Generate(args) => commands::generate::run(&settings, &run_id, args),
        cli::Command::Run(args) => commands::run::run(&settings, &run_id, args),
    }
}
