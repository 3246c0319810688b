//! `llmprune run`: the whole job from one configuration: the dense model evaluated, pruned,
//! the pruned model evaluated, recovered with LoRA, the recovered model evaluated, and a report,
//! on one cluster (or in this process). Each phase's options are the phase command's flags,
//! given as keys of its section (`[prune] ratio = 0.25` is `llmprune prune --ratio 0.25`), so
//! every phase is planned and checked before anything runs. Each phase writes its own
//! subdirectory; `--resume` skips the finished ones and continues an interrupted prune or
//! recovery from its checkpoint.

use crate::cli::{ClusterArgs, EvalArgs, PruneArgs, RecoverArgs, RunArgs};
use crate::commands::cluster::{cluster_config, ClusterSession};
use crate::report::{write_report, RunOutputs};
use crate::settings::{PhaseOptions, Settings};
use anyhow::{anyhow, bail, Context, Result};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, FromArgMatches};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options whose values are comma-separated lists (a TOML array is joined).
const COMMA_LISTS: [&str; 5] = ["tasks", "ppl", "extra_val", "eval_ppl", "lora_targets"];

/// Flags the run sets itself, by phase.
const RESERVED: [&str; 9] = ["model", "out", "seed", "local_workers", "workers", "resume", "inject_fault", "replicas", "stages"];

/// A phase's command-line arguments from its section, each remembered with its key.
struct PhaseArgv {
    section: &'static str,
    argv: Vec<String>,
    /// (flag, key) of every option from the configuration.
    keys: Vec<(String, String)>,
}

impl PhaseArgv {
    fn new(section: &'static str, options: &PhaseOptions, fixed: &[(&str, String)]) -> Result<Self> {
        let mut argv = Vec::new();
        for (flag, value) in fixed {
            argv.push(format!("--{flag}"));
            if !value.is_empty() {
                argv.push(value.clone());
            }
        }
        let mut keys = Vec::new();
        for (key, value) in options {
            if RESERVED.contains(&key.as_str()) {
                bail!("{section}.{key}: set by the run itself (top-level `model`, `out`, `seed`, `[workers]`, or `llmprune run --resume`)");
            }
            let flag = format!("--{}", key.replace('_', "-"));
            keys.push((flag.clone(), format!("{section}.{key}")));
            let scalar = |v: &Value| -> Result<String> {
                match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    Value::Bool(b) => Ok(b.to_string()),
                    _ => Err(anyhow!("{section}.{key}: expected a string, number or boolean")),
                }
            };
            match value {
                // Flags: true sets them (from TOML, or "true" from the environment or --set).
                Value::Bool(true) => argv.push(flag),
                Value::Bool(false) => {}
                Value::String(s) if s == "true" || s == "false" => {
                    if s == "true" {
                        argv.push(flag);
                    }
                }
                Value::Array(items) if COMMA_LISTS.contains(&key.as_str()) => {
                    let parts = items.iter().map(scalar).collect::<Result<Vec<_>>>()?;
                    argv.extend([flag, parts.join(",")]);
                }
                Value::Array(items) => {
                    for item in items {
                        argv.extend([flag.clone(), scalar(item)?]);
                    }
                }
                v => argv.extend([flag, scalar(v)?]),
            }
        }
        Ok(Self { section, argv, keys })
    }

    /// The phase command's arguments, checked by its own parser; an error names the key.
    fn parse<T: Args + FromArgMatches>(&self) -> Result<T> {
        let cmd = T::augment_args(clap::Command::new(self.section).no_binary_name(true));
        let matches = cmd.try_get_matches_from(&self.argv).map_err(|e| self.key_error(e))?;
        T::from_arg_matches(&matches).map_err(|e| self.key_error(e))
    }

    fn key_error(&self, e: clap::Error) -> anyhow::Error {
        let arg = match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(s)) => s.clone(),
            Some(ContextValue::Strings(v)) => v.join(" "),
            _ => String::new(),
        };
        let first = e.render().to_string().lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
        let key = self.keys.iter().find(|(flag, _)| arg.split([' ', '=']).next() == Some(flag.as_str())).map(|(_, k)| k.clone());
        match (e.kind(), key) {
            (ErrorKind::UnknownArgument, _) => {
                let unknown = self.keys.iter().find(|(flag, _)| first.contains(&format!("'{flag}'"))).map_or(arg.clone(), |(_, k)| k.clone());
                anyhow!("{unknown}: not an option of `llmprune {}` ({first})", self.section)
            }
            (ErrorKind::MissingRequiredArgument, _) => {
                let flag = arg.split([' ', '=']).next().unwrap_or_default().trim_start_matches("--").replace('-', "_");
                anyhow!("{}.{flag}: required ({first})", self.section)
            }
            (_, Some(k)) => anyhow!("{k}: {first}"),
            (_, None) => anyhow!("[{}]: {first}", self.section),
        }
    }
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
    prune: PruneArgs,
    recover: RecoverArgs,
    /// Evaluation of the dense, pruned and recovered models.
    evals: Vec<(String, EvalArgs)>,
    cluster: Option<ClusterArgs>,
}

fn plan(settings: &Settings, args: &RunArgs) -> Result<Plan> {
    let model = settings.model.clone().ok_or_else(|| anyhow!("model: required (the model to compress: a path or `smollm2`)"))?;
    let out = settings.out.clone().ok_or_else(|| anyhow!("out: required (the run's output directory)"))?;
    let seed = settings.seed.unwrap_or(42).to_string();
    let w = &settings.workers;
    let resume = if args.resume { vec![("resume", String::new())] } else { vec![] };
    let pruned = out.join("pruned");
    let recovered = out.join("recovered");
    let path = |p: &Path| p.display().to_string();
    // The phases' own checks see the run's workers (the run's cluster serves the phases).
    let workers: Vec<(&str, String)> = match (w.local, w.remote) {
        (Some(n), _) => vec![("local-workers", n.to_string())],
        (_, Some(n)) => vec![("workers", n.to_string())],
        _ => vec![],
    };
    if let Some(stages) = w.stages {
        let n = w.local.or(w.remote).unwrap_or(1);
        if !n.is_multiple_of(stages) {
            bail!("workers.stages {stages}: the {n} workers must split into equal pipelines");
        }
    }
    let mut fixed = vec![("model", model.clone()), ("out", path(&pruned)), ("seed", seed.clone())];
    fixed.extend(resume.clone());
    fixed.extend(workers.clone());
    if let Some(r) = w.replicas {
        fixed.push(("replicas", r.to_string()));
    }
    let mut commands = Vec::new();
    let mut phase_argv = |section: &'static str, options: &PhaseOptions, fixed: &[(&str, String)]| -> Result<PhaseArgv> {
        let p = PhaseArgv::new(section, options, fixed)?;
        commands.push(format!("llmprune {section} {}", p.argv.join(" ")));
        Ok(p)
    };
    let prune: PruneArgs = phase_argv("prune", &settings.prune, &fixed)?.parse()?;
    crate::commands::prune::check_args(&prune).map_err(|e| in_keys("prune", e))?;
    let mut fixed = vec![("model", path(&pruned)), ("out", path(&recovered)), ("seed", seed)];
    fixed.extend(resume);
    fixed.extend(workers);
    if let Some(s) = w.stages {
        fixed.push(("stages", s.to_string()));
    }
    let recover: RecoverArgs = phase_argv("recover", &settings.recover, &fixed)?.parse()?;
    crate::commands::recover::check_flags(&recover).map_err(|e| in_keys("recover", e))?;
    let evals = [("dense", model), ("pruned", path(&pruned)), ("recovered", path(&recovered))]
        .into_iter()
        .map(|(name, m)| {
            let fixed = [("model", m), ("out", path(&out.join("eval").join(format!("{name}.json")))), ("name", name.to_string())];
            let args: EvalArgs = phase_argv("eval", &settings.eval, &fixed)?.parse()?;
            crate::commands::eval::check_args(&args).map_err(|e| in_keys("eval", e))?;
            Ok((name.to_string(), args))
        })
        .collect::<Result<Vec<_>>>()?;
    let cluster = (w.local.is_some() || w.remote.is_some()).then(|| ClusterArgs {
        local_workers: w.local,
        workers: w.remote,
        replicas: 1,
        resume: args.resume,
        inject_fault: args.inject_fault.clone(),
    });
    Ok(Plan { out, commands, prune, recover, evals, cluster })
}

/// Runs the phases in order on one cluster, timing each.
struct Runner<'a> {
    settings: &'a Settings,
    run_id: &'a str,
    session: Option<ClusterSession>,
    seconds: serde_json::Map<String, Value>,
}

impl Runner<'_> {
    fn phase(&mut self, name: &str, done: bool, f: impl FnOnce(&Settings, &str, Option<&mut ClusterSession>) -> Result<()>) -> Result<()> {
        if done {
            tracing::info!(phase = name, "finished before: skipped (--resume)");
            return Ok(());
        }
        tracing::info!(phase = name, "phase starts");
        let t = Instant::now();
        f(self.settings, self.run_id, self.session.as_mut()).with_context(|| format!("phase `{name}`"))?;
        self.seconds.insert(name.to_string(), t.elapsed().as_secs_f64().into());
        Ok(())
    }

    fn eval(&mut self, (name, args): (String, EvalArgs)) -> Result<()> {
        let done = args.out.is_file();
        self.phase(&format!("eval-{name}"), done, |st, id, s| crate::commands::eval::run(st, id, args, s))
    }
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
    std::fs::create_dir_all(out.join("eval")).with_context(|| format!("creating {}", out.display()))?;
    let session = match &cluster {
        Some(c) => Some(ClusterSession::start(cluster_config(settings, c)?, run_id)?),
        None => None,
    };
    let mut runner = Runner { settings, run_id, session, seconds: serde_json::Map::new() };
    let mut evals = evals.into_iter();
    let phases = || -> Result<()> {
        let mut next_eval = || evals.next().ok_or_else(|| anyhow!("no evaluation planned"));
        let (dense, pruned, recovered) = (next_eval()?, next_eval()?, next_eval()?);
        runner.eval(dense)?;
        runner.phase("prune", out.join("pruned/plan.json").is_file(), |st, id, s| crate::commands::prune::run(st, id, prune, s))?;
        runner.eval(pruned)?;
        runner.phase("recover", out.join("recovered/recover_report.json").is_file(), |st, id, s| crate::commands::recover::run(st, id, recover, s))?;
        runner.eval(recovered)
    };
    let result = phases();
    if let Some(s) = runner.session.take() {
        s.finish();
    }
    result?;
    let report = write_report(&RunOutputs::at(&out), &runner.seconds, t0.elapsed().as_secs_f64())?;
    println!("report: {}", report.display());
    Ok(())
}
