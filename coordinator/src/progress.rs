//! The workers' progress, shown once at the coordinator. Per phase (`scoring`, `recovering`,
//! `validation loss`, `evaluating`, `timing latency`, …) the workers' reports are joined: the
//! workers of a pipeline stage that each do a share of its work (`share`) add up, workers that
//! take the same steps together count once, and the slowest stage sets the pace. On a terminal
//! each running phase has a bar (indicatif); off a terminal, or with `--log-format json`, a
//! phase is logged when it starts, every few seconds, and when it ends, with units, rate and ETA.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use llmprune_shared::proto::ProgressEvent;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How often a running phase is logged off a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// A phase's progress over all workers.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    pub done: u64,
    pub total: u64,
    pub unit: String,
    /// Tokens per second of the slowest stage (its shares' rates added), or infinity when no
    /// worker says.
    pub tokens_per_s: f64,
    pub eta_s: f64,
    pub workers: usize,
}

impl Joined {
    pub fn finished(&self) -> bool {
        self.total > 0 && self.done >= self.total
    }
}

/// The latest report of each worker in one phase, joined as the module says.
pub fn join(reports: &[&ProgressEvent]) -> Option<Joined> {
    let mut stages: BTreeMap<u32, Vec<&ProgressEvent>> = BTreeMap::new();
    for e in reports {
        stages.entry(e.rank).or_default().push(e);
    }
    // Per stage: (done, total, rate). Shares add up; workers in lockstep count once, at the
    // pace of the one behind.
    let per_stage = stages.values().map(|workers| {
        let rates = workers.iter().map(|e| e.tokens_per_s).filter(|r| r.is_finite() && *r > 0.0);
        if workers.iter().all(|e| e.share) {
            (workers.iter().map(|e| e.done).sum::<u64>(), workers.iter().map(|e| e.total).sum::<u64>(), rates.sum::<f64>())
        } else {
            (workers.iter().map(|e| e.done).min().unwrap_or(0), workers.iter().map(|e| e.total).max().unwrap_or(0), rates.fold(f64::INFINITY, f64::min))
        }
    });
    let per_stage: Vec<(u64, u64, f64)> = per_stage.collect();
    // The slowest stage: the least done of what it has to do.
    let (done, total, _) = *per_stage.iter().min_by(|a, b| (a.0 as f64 / a.1.max(1) as f64).total_cmp(&(b.0 as f64 / b.1.max(1) as f64)))?;
    Some(Joined {
        done,
        total,
        unit: reports.first()?.unit.clone(),
        tokens_per_s: per_stage.iter().map(|s| s.2).filter(|r| *r > 0.0).fold(f64::INFINITY, f64::min),
        eta_s: reports.iter().map(|e| e.eta_s).fold(0.0, f64::max),
        workers: reports.len(),
    })
}

/// One line of a phase's progress in the user's units: `recovering: 12/30 steps (40%),
/// 2310 tokens/s, ETA 1m05s` (rate and ETA only when known).
pub fn progress_line(phase: &str, p: &Joined) -> String {
    let mut line = format!("{phase}: {}/{} {}", p.done, p.total, p.unit);
    if p.total > 0 {
        line.push_str(&format!(" ({:.0}%)", 100.0 * p.done as f64 / p.total as f64));
    }
    if p.tokens_per_s.is_finite() && p.tokens_per_s > 0.0 {
        line.push_str(&format!(", {:.0} tokens/s", p.tokens_per_s));
    }
    if !p.finished() && p.eta_s.is_finite() && p.eta_s > 0.0 {
        line.push_str(&format!(", ETA {}", duration(p.eta_s)));
    }
    line
}

/// Seconds as `42s`, `1m05s` or `2h01m`.
fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// One phase as shown: its workers' latest reports, its bar, when it was last logged.
#[derive(Default)]
struct PhaseState {
    reports: HashMap<String, ProgressEvent>,
    bar: Option<ProgressBar>,
    logged: Option<Instant>,
    finished: bool,
}

/// Every phase's progress, shown as bars on a terminal or as log lines.
pub struct ProgressDisplay {
    bars: Option<MultiProgress>,
    phases: HashMap<String, PhaseState>,
}

impl ProgressDisplay {
    /// Bars when `terminal` (stderr is one and the logs are text), log lines otherwise.
    pub fn new(terminal: bool) -> Self {
        Self { bars: terminal.then(MultiProgress::new), phases: HashMap::new() }
    }

    pub fn update(&mut self, e: ProgressEvent) {
        tracing::debug!(worker = %e.worker_id, rank = e.rank, phase = %e.phase, done = e.done, total = e.total, "worker progress");
        let phase = e.phase.clone();
        let state = self.phases.entry(phase.clone()).or_default();
        // A phase that comes back (validation every few steps) starts afresh.
        if state.finished && e.done < e.total {
            *state = PhaseState::default();
        }
        state.reports.insert(e.worker_id.clone(), e);
        let reports: Vec<&ProgressEvent> = state.reports.values().collect();
        let Some(p) = join(&reports) else {
            return;
        };
        if let Some(multi) = &self.bars {
            let bar = state.bar.get_or_insert_with(|| multi.add(new_bar(&phase, &p.unit)));
            bar.set_length(p.total);
            bar.set_position(p.done);
            if p.finished() {
                bar.finish_and_clear();
                state.bar = None;
            }
        } else if state.logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) || (p.finished() && !state.finished) {
            state.logged = Some(Instant::now());
            tracing::info!(workers = p.workers, "{}", progress_line(&phase, &p));
        }
        state.finished = p.finished();
    }
}

fn new_bar(phase: &str, unit: &str) -> ProgressBar {
    let bar = ProgressBar::no_length();
    let template = format!("{{msg:>16}} [{{bar:40}}] {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}})");
    let style = ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(phase.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(worker: &str, rank: u32, done: u64, total: u64, share: bool) -> ProgressEvent {
        ProgressEvent { worker_id: worker.into(), rank, phase: "p".into(), done, total, unit: "steps".into(), share, ..Default::default() }
    }

    #[test]
    fn shares_add_up_and_lockstep_workers_count_once() {
        // Two workers evaluating their shares of one stage: 40 + 25 of 60 + 55 documents.
        let (a, b) = (event("a", 0, 40, 60, true), event("b", 0, 25, 55, true));
        let p = join(&[&a, &b]).unwrap();
        assert_eq!((p.done, p.total, p.workers), (65, 115, 2));
        // Two replicas training the same steps: the one behind sets the count.
        let (a, b) = (event("a", 0, 12, 30, false), event("b", 0, 11, 30, false));
        assert_eq!(join(&[&a, &b]).map(|p| (p.done, p.total)), Some((11, 30)));
        // Two stages, each of two replicas with shares of the passes: the slower stage shows.
        let s0 = [event("a", 0, 3, 5, true), event("b", 0, 3, 5, true)];
        let s1 = [event("c", 1, 2, 5, true), event("d", 1, 3, 5, true)];
        let all: Vec<&ProgressEvent> = s0.iter().chain(&s1).collect();
        assert_eq!(join(&all).map(|p| (p.done, p.total)), Some((5, 10)));
        assert_eq!(join(&[]), None);
    }

    #[test]
    fn progress_lines_say_units_share_rate_and_eta() {
        let p = |done, total, unit: &str, tokens_per_s, eta_s| Joined { done, total, unit: unit.into(), tokens_per_s, eta_s, workers: 1 };
        assert_eq!(progress_line("recovering", &p(12, 30, "steps", 2310.4, 65.0)), "recovering: 12/30 steps (40%), 2310 tokens/s, ETA 1m05s");
        assert_eq!(progress_line("scoring", &p(3, 10, "passes", f64::INFINITY, 0.0)), "scoring: 3/10 passes (30%)");
        assert_eq!(progress_line("evaluating", &p(10, 10, "batches", 99.0, 5.0)), "evaluating: 10/10 batches (100%), 99 tokens/s");
        assert_eq!(progress_line("loading", &p(1, 2, "shards", 0.0, 7265.0)), "loading: 1/2 shards (50%), ETA 2h01m");
    }

    #[test]
    fn a_phase_that_returns_starts_afresh() {
        let mut display = ProgressDisplay::new(false);
        display.update(event("a", 0, 4, 4, false));
        assert!(display.phases["p"].finished);
        display.update(event("a", 0, 1, 4, false));
        let state = &display.phases["p"];
        assert!(!state.finished && state.reports["a"].done == 1);
    }
}
