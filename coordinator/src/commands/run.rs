//! `llmprune run`: the whole job from one configuration: the dense model evaluated, pruned,
//! the pruned model evaluated, recovered with LoRA, the recovered model evaluated, and a report,
//! on one cluster (or one worker in this process). Each phase's section holds its typed job
//! settings (`[prune]` is `PruneSettings`, the settings `llmprune prune` flattens into its
//! flags), read with the configuration's type conversions, so every phase is planned and
//! checked before anything runs. Each phase writes its own subdirectory; `--resume` skips the
//! phases that finished with the settings they would run with now (`phase_stamp`), refuses
//! those that finished with others, and continues an interrupted prune or recovery from its
//! checkpoint.

use crate::cli::{ClusterArgs, EvalArgs, PruneArgs, RecoverArgs, RunArgs};
use crate::commands::cluster::{cluster_config, ClusterSession};
use crate::commands::phase_stamp::Stamp;
use crate::report::{write_report, RunOutputs};
use crate::settings::{PhaseOptions, Settings};
use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Keys the run sets itself (`model`, `out`, `seed`, `[workers]`, `--resume`), never a section.
const RESERVED: [&str; 9] = ["model", "out", "seed", "local_workers", "workers", "resume", "inject_fault", "replicas", "stages"];

/// A phase's settings from its section: every key known to the phase's command, values
/// converted to their types as the configuration converts them (`"0.4"` from the environment
/// is a number); an error names the key.
fn phase_settings<T: clap::Args + DeserializeOwned>(section: &'static str, options: &PhaseOptions) -> Result<T> {
    let known: Vec<String> = T::augment_args(clap::Command::new(section)).get_arguments().map(|a| a.get_id().to_string()).collect();
    for key in options.keys() {
        if RESERVED.contains(&key.as_str()) {
            bail!("{section}.{key}: set by the run itself (top-level `model`, `out`, `seed`, `[workers]`, or `llmprune run --resume`)");
        }
        if !known.contains(key) {
            bail!("{section}.{key}: not an option of `llmprune {section}` (its options: {})", known.join(", "));
        }
    }
    let source = config::Config::try_from(options).with_context(|| format!("[{section}]"))?;
    source.try_deserialize::<T>().map_err(|e| {
        // The configuration names the key within the section; say the section too.
        let msg = e.to_string().replace("for key `", &format!("for key `{section}."));
        anyhow!("[{section}]: {msg}")
    })
}

/// The command a phase runs, for `--dry-run`: its fixed flags and every setting that differs
/// from the default.
fn command_line<T: Serialize + Default>(section: &str, fixed: &[(&str, String)], settings: &T) -> Result<String> {
    let mut line = format!("llmprune {section}");
    for (flag, value) in fixed {
        line.push_str(&format!(" --{flag}"));
        if !value.is_empty() {
            line.push_str(&format!(" {value}"));
        }
    }
    let (Value::Object(given), Value::Object(default)) = (serde_json::to_value(settings)?, serde_json::to_value(T::default())?) else {
        bail!("[{section}]: settings are not a table");
    };
    for (key, value) in given.iter().filter(|(k, v)| default.get(*k) != Some(*v)) {
        let flag = format!("--{}", key.replace('_', "-"));
        match value {
            Value::Bool(true) => line.push_str(&format!(" {flag}")),
            Value::Bool(false) | Value::Null => {}
            Value::Array(items) => {
                let parts: Vec<String> = items.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect();
                line.push_str(&format!(" {flag} {}", parts.join(",")));
            }
            Value::String(s) => line.push_str(&format!(" {flag} {s}")),
            v => line.push_str(&format!(" {flag} {v}")),
        }
    }
    Ok(line)
}

/// A phase command's error with its flags (`--ratio`) written as the run's keys (`prune.ratio`).
fn in_keys(section: &str, e: anyhow::Error) -> anyhow::Error {
    let msg = format!("{e:#}");
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg.as_str();
    while let Some(i) = rest.find("--") {
        out.push_str(&rest[..i]);
        let name: String = rest[i + 2..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        if name.is_empty() {
            out.push_str("--");
        } else {
            out.push_str(&format!("{section}.{}", name.replace('-', "_")));
        }
        rest = &rest[i + 2 + name.len()..];
    }
    out.push_str(rest);
    anyhow!(out)
}

/// Everything a run does, checked before it starts.
struct Plan {
    out: PathBuf,
    /// Each phase as the command it runs, for --dry-run.
    commands: Vec<String>,
    prune: (PruneArgs, Stamp),
    recover: (RecoverArgs, Stamp),
    /// Evaluation of the dense, pruned and recovered models.
    evals: Vec<(String, EvalArgs, Stamp)>,
    cluster: Option<ClusterArgs>,
}

fn plan(settings: &Settings, args: &RunArgs) -> Result<Plan> {
    let model = settings.model.clone().ok_or_else(|| anyhow!("model: required (the model to compress: a path or `smollm2`)"))?;
    let out = settings.out.clone().ok_or_else(|| anyhow!("out: required (the run's output directory)"))?;
    let seed = settings.seed.unwrap_or(42);
    let w = &settings.workers;
    let pruned = out.join("pruned");
    let recovered = out.join("recovered");
    let path = |p: &Path| p.display().to_string();
    if let Some(stages) = w.stages {
        let n = w.local.or(w.remote).unwrap_or(1);
        if !n.is_multiple_of(stages) {
            bail!("workers.stages {stages}: the {n} workers must split into equal pipelines");
        }
    }
    // The phases' own checks see the run's workers (the run's cluster serves the phases).
    let phase_cluster = |replicas: usize| ClusterArgs { local_workers: w.local, workers: w.remote, replicas, resume: args.resume, inject_fault: None };
    let mut fixed: Vec<(&str, String)> = match (w.local, w.remote) {
        (Some(n), _) => vec![("local-workers", n.to_string())],
        (_, Some(n)) => vec![("workers", n.to_string())],
        _ => vec![],
    };
    if args.resume {
        fixed.push(("resume", String::new()));
    }
    let mut commands = Vec::new();

    let mut job: llmprune_shared::jobs::PruneSettings = phase_settings("prune", &settings.prune)?;
    job.seed = seed;
    let replicas = w.replicas.unwrap_or(1);
    let prune = PruneArgs { model: model.clone(), job, out: pruned.clone(), cluster: phase_cluster(replicas) };
    crate::commands::prune::check_args(&prune).map_err(|e| in_keys("prune", e))?;
    let mut flags = vec![("model", model.clone()), ("out", path(&pruned))];
    flags.extend(fixed.iter().cloned());
    if replicas > 1 {
        flags.push(("replicas", replicas.to_string()));
    }
    commands.push(command_line("prune", &flags, &prune.job)?);
    let prune_stamp = Stamp::new("prune", &model, &prune.job, &[])?;

    let mut job: llmprune_shared::jobs::RecoverSettings = phase_settings("recover", &settings.recover)?;
    job.seed = seed;
    let stages = w.stages.unwrap_or(1);
    let recover = RecoverArgs { model: pruned.clone(), job, out: recovered.clone(), stages, cluster: phase_cluster(1) };
    crate::commands::recover::check_flags(&recover).map_err(|e| in_keys("recover", e))?;
    let mut flags = vec![("model", path(&pruned)), ("out", path(&recovered))];
    flags.extend(fixed.iter().cloned());
    if stages > 1 {
        flags.push(("stages", stages.to_string()));
    }
    commands.push(command_line("recover", &flags, &recover.job)?);
    let recover_stamp = Stamp::new("recover", &path(&pruned), &recover.job, &[&prune_stamp])?;

    let job: llmprune_shared::jobs::EvalSettings = phase_settings("eval", &settings.eval)?;
    let mut evals = Vec::new();
    for (name, m, inputs) in [("dense", model, vec![]), ("pruned", path(&pruned), vec![&prune_stamp]), ("recovered", path(&recovered), vec![&recover_stamp])] {
        let eval_out = out.join("eval").join(format!("{name}.json"));
        let args = EvalArgs { model: m.clone(), job: job.clone(), name: Some(name.to_string()), out: eval_out.clone(), cluster: phase_cluster(1) };
        crate::commands::eval::check_args(&args).map_err(|e| in_keys("eval", e))?;
        let stamp = Stamp::new(&format!("eval-{name}"), &m, &args.job, &inputs)?;
        commands.push(command_line("eval", &[("model", m), ("out", path(&eval_out)), ("name", name.to_string())], &args.job)?);
        evals.push((name.to_string(), args, stamp));
    }
    let cluster = (w.local.is_some() || w.remote.is_some()).then(|| ClusterArgs { inject_fault: args.inject_fault.clone(), ..phase_cluster(1) });
    Ok(Plan { out, commands, prune: (prune, prune_stamp), recover: (recover, recover_stamp), evals, cluster })
}

/// Runs the phases in order on one cluster, timing each.
struct Runner<'a> {
    settings: &'a Settings,
    run_id: &'a str,
    out: &'a Path,
    session: Option<ClusterSession>,
    seconds: serde_json::Map<String, Value>,
    /// Seconds of the phases finished before (skipped now), by phase.
    finished: std::collections::HashMap<String, f64>,
}

impl Runner<'_> {
    fn phase(&mut self, stamp: &Stamp, f: impl FnOnce(&Settings, &str, Option<&mut ClusterSession>) -> Result<()>) -> Result<()> {
        let name = stamp.phase.as_str();
        if let Some(&seconds) = self.finished.get(name) {
            tracing::info!(phase = name, "finished before with these settings: skipped (--resume)");
            self.seconds.insert(name.to_string(), seconds.into());
            return Ok(());
        }
        tracing::info!(phase = name, "phase starts");
        let t = Instant::now();
        f(self.settings, self.run_id, self.session.as_mut()).with_context(|| format!("phase `{name}`"))?;
        let seconds = t.elapsed().as_secs_f64();
        stamp.write(self.out, seconds)?;
        self.seconds.insert(name.to_string(), seconds.into());
        Ok(())
    }

    fn eval(&mut self, (_, args, stamp): (String, EvalArgs, Stamp)) -> Result<()> {
        self.phase(&stamp, |st, id, s| crate::commands::eval::run(st, id, args, s))
    }
}

/// The phases that finished before, each checked against the settings it would run with now
/// (any that differ stop the run before anything runs), with their recorded seconds.
fn finished_phases(out: &Path, phases: &[(&Stamp, PathBuf, bool)]) -> Result<std::collections::HashMap<String, f64>> {
    let mut finished = std::collections::HashMap::new();
    for (stamp, output, done) in phases {
        if *done {
            finished.insert(stamp.phase.clone(), stamp.check_finished(out, output)?);
        }
    }
    Ok(finished)
}

pub fn run(settings: &Settings, run_id: &str, args: RunArgs) -> Result<()> {
    let span = tracing::info_span!("run", run_id, phase = "run", rank = 0);
    let _enter = span.enter();
    let t0 = Instant::now();
    let Plan { out, commands, prune, recover, evals, cluster } = plan(settings, &args)?;
    if args.dry_run {
        let workers = match &cluster {
            Some(c) => {
                format!("{} {} workers", c.local_workers.or(c.workers).unwrap_or(0), if c.local_workers.is_some() { "local" } else { "remote" })
            }
            None => "this process".into(),
        };
        println!("run in {} on {workers}; phases:", out.display());
        // Planned as prune, recover, then the three evaluations; run interleaved.
        for i in [2, 0, 3, 1, 4] {
            println!("  {}", commands[i]);
        }
        return Ok(());
    }
    if out.exists() && !args.resume {
        bail!("out {}: already exists; `llmprune run --resume` continues that run", out.display());
    }
    let (pruned_plan, recover_report) = (out.join("pruned/plan.json"), out.join("recovered/recover_report.json"));
    let mut checks = vec![(&prune.1, out.join("pruned"), pruned_plan.is_file()), (&recover.1, out.join("recovered"), recover_report.is_file())];
    checks.extend(evals.iter().map(|(_, a, stamp)| (stamp, a.out.clone(), a.out.is_file())));
    let finished = finished_phases(&out, &checks)?;
    std::fs::create_dir_all(out.join("eval")).with_context(|| format!("creating {}", out.display()))?;
    let session = match &cluster {
        Some(c) => Some(ClusterSession::start(cluster_config(settings, c)?, run_id)?),
        None => None,
    };
    let mut runner = Runner { settings, run_id, out: &out, session, seconds: serde_json::Map::new(), finished };
    let mut evals = evals.into_iter();
    let phases = || -> Result<()> {
        let mut next_eval = || evals.next().ok_or_else(|| anyhow!("no evaluation planned"));
        let (dense, pruned, recovered) = (next_eval()?, next_eval()?, next_eval()?);
        runner.eval(dense)?;
        let (prune, stamp) = prune;
        runner.phase(&stamp, |st, id, s| crate::commands::prune::run(st, id, prune, s))?;
        runner.eval(pruned)?;
        let (recover, stamp) = recover;
        runner.phase(&stamp, |st, id, s| crate::commands::recover::run(st, id, recover, s))?;
        runner.eval(recovered)
    };
    let result = phases();
    if let Some(s) = runner.session.take() {
        s.finish();
    }
    result?;
    // The run's total: this invocation, and the phases it found finished (as they took then).
    let earlier: f64 = runner.finished.values().sum();
    let report = write_report(&RunOutputs::at(&out), &runner.seconds, t0.elapsed().as_secs_f64() + earlier)?;
    println!("report: {}", report.display());
    Ok(())
}
