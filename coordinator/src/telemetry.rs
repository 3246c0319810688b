//! Logging: structured tracing on stderr, filtered by RUST_LOG (default `info`); coloured only
//! on a terminal and without NO_COLOR (a log file or a pipe gets plain text).

use crate::settings::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Whether stderr takes ANSI colours: a terminal, and no `NO_COLOR` (no-color.org).
pub fn colour_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour_on_stderr());
    // A second initialisation (tests calling run twice) is harmless; ignore it.
    let _ = match format {
        // Text for people: the module path adds a column of noise to every line.
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// A short id for this invocation, carried by every span.
pub fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}-{:x}", nanos as u64 & 0xffff_ffff, std::process::id())
}
