//! `llmprune`: the coordinator CLI.

mod cli;
mod cluster;
mod commands;
mod fetch;
mod progress;
mod settings;
mod telemetry;

use anyhow::Result;
use clap::Parser;

#[global_allocator]
static ALLOCATOR: llmprune_worker::memory::MiMalloc = llmprune_worker::memory::MiMalloc;

fn main() -> std::process::ExitCode {
    llmprune_worker::memory::configure_allocator();
    match run(cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: cli::Cli) -> Result<()> {
    let settings = settings::Settings::load(&cli.global.overrides())?;
    telemetry::init(settings.log_format);
    let run_id = telemetry::new_run_id();
    match cli.command {
        cli::Command::Fetch(args) => commands::fetch::run(&settings, args),
        cli::Command::Ppl(args) => commands::ppl::run(&settings, &run_id, args),
        cli::Command::Bench(args) => commands::bench::run(&settings, args),
        cli::Command::Config(args) => commands::config::run(&settings, args),
        cli::Command::Prune(args) => commands::prune::run(&settings, &run_id, args),
        cli::Command::ApplyPlan(args) => commands::apply_plan::run(&settings, &run_id, args),
        cli::Command::Recover(args) => commands::recover::run(&settings, &run_id, args),
        cli::Command::Eval(args) => commands::eval::run(&settings, &run_id, args),
        cli::Command::Table(args) => commands::table::run(args),
    }
}
