//! Progress of long work: a bar on a terminal, periodic log lines (with rate and ETA)
//! otherwise, so CI logs and `--log-format json` stay readable.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    bar: Option<ProgressBar>,
    what: String,
    unit: &'static str,
    start: Instant,
    last_log: Instant,
}

impl Progress {
    pub fn new(what: &str, total: u64, unit: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {per_sec} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(what.to_string());
            bar
        });
        let now = Instant::now();
        Self { bar, what: what.to_string(), unit, start: now, last_log: now }
    }

    /// Moves a terminal bar only (the caller logs).
    pub fn set(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    /// `done` of `total` units; `tokens` processed so far, for the rate.
    pub fn update(&mut self, done: u64, total: u64, tokens: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.last_log) < Duration::from_secs(10) && done < total {
            return;
        }
        self.last_log = now;
        let secs = now.duration_since(self.start).as_secs_f64().max(1e-9);
        let eta = if done > 0 { secs * (total - done) as f64 / done as f64 } else { f64::NAN };
        tracing::info!(
            what = %self.what,
            done,
            total,
            unit = self.unit,
            tokens_per_s = format!("{:.0}", tokens as f64 / secs),
            eta_s = format!("{eta:.0}"),
            "progress"
        );
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
