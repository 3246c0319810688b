//! Where a worker may read and write. A worker reachable from other machines is started
//! with roots (`--model-root`, `--data-root`, `--output-root`), and every path a request
//! names must resolve (symbolic links followed) inside one of them: a holder of the cluster
//! token cannot make the worker read, hash or write anything else. A refusal says the same
//! whether or not the path exists. A worker without roots (loopback only: started by its
//! coordinator on the same machine, by the same user) is unconfined.

use crate::error::{Error, Result};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, Default)]
pub struct Confinement {
    /// Canonical roots; `None`: unconfined.
    roots: Option<Roots>,
}

#[derive(Debug, Clone)]
struct Roots {
    models: Vec<PathBuf>,
    data: Vec<PathBuf>,
    outputs: Vec<PathBuf>,
}

impl Confinement {
    /// No confinement: every path is allowed.
    pub fn none() -> Self {
        Self { roots: None }
    }

    /// Confined to existing directories: models and data are read under theirs, outputs
    /// written (and read back, as the next phase's model) under theirs.
    pub fn to_roots(models: &[PathBuf], data: &[PathBuf], outputs: &[PathBuf]) -> Result<Self> {
        let canonical = |flag: &str, dirs: &[PathBuf]| -> Result<Vec<PathBuf>> {
            dirs.iter()
                .map(|d| match std::fs::canonicalize(d) {
                    Ok(c) if c.is_dir() => Ok(c),
                    Ok(_) => Err(Error::Invalid(format!("{flag} {}: not a directory", d.display()))),
                    Err(e) => Err(Error::Invalid(format!("{flag} {}: {e}", d.display()))),
                })
                .collect()
        };
        let roots = Roots { models: canonical("--model-root", models)?, data: canonical("--data-root", data)?, outputs: canonical("--output-root", outputs)? };
        Ok(Self { roots: Some(roots) })
    }

    pub fn is_confined(&self) -> bool {
        self.roots.is_some()
    }

    /// `path` (named `what` in errors) resolved, when it lies under a model, data or output
    /// root.
    pub fn readable(&self, what: &str, path: &Path) -> Result<PathBuf> {
        match &self.roots {
            None => Ok(path.to_path_buf()),
            Some(r) => inside(what, path, r.models.iter().chain(&r.data).chain(&r.outputs), "--model-root, --data-root or --output-root"),
        }
    }

    /// `path` (named `what` in errors) resolved, when it lies under an output root.
    pub fn writable(&self, what: &str, path: &Path) -> Result<PathBuf> {
        match &self.roots {
            None => Ok(path.to_path_buf()),
            Some(r) => inside(what, path, r.outputs.iter(), "--output-root"),
        }
    }
}

fn inside<'a>(what: &str, path: &Path, mut roots: impl Iterator<Item = &'a PathBuf>, flags: &str) -> Result<PathBuf> {
    match resolve(path) {
        Some(resolved) if roots.any(|root| resolved.starts_with(root)) => Ok(resolved),
        _ => Err(Error::Invalid(format!("{what} is not under this worker's {flags}"))),
    }
}

/// `path` with symbolic links resolved: the longest existing ancestor canonicalized, the rest
/// (not yet created, so no links) appended; none when the rest climbs (`..`) or the path is
/// relative.
fn resolve(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(existing) {
            Ok(base) => {
                let mut out = base;
                for part in rest.iter().rev() {
                    out.push(part);
                }
                return Some(out);
            }
            Err(_) => {
                let last = existing.components().next_back()?;
                match last {
                    Component::Normal(name) => rest.push(name.to_os_string()),
                    _ => return None,
                }
                existing = existing.parent()?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_inside_their_roots_or_are_refused_alike() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let (models, data, outputs, secret) = (root.join("models"), root.join("data"), root.join("outputs"), root.join("secret"));
        for d in [&models, &data, &outputs, &secret] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(secret.join("key"), "x").unwrap();
        std::fs::write(models.join("m.gguf"), "x").unwrap();
        // A link inside a root that points out of it.
        std::os::unix::fs::symlink(&secret, models.join("escape")).unwrap();
        let c = Confinement::to_roots(std::slice::from_ref(&models), std::slice::from_ref(&data), std::slice::from_ref(&outputs)).unwrap();
        assert!(c.is_confined());
        assert_eq!(c.readable("the model", &models.join("m.gguf")).unwrap(), models.join("m.gguf"));
        assert!(c.readable("the data", &data.join("not-yet.json")).is_ok());
        // Outputs are read back as the next phase's model, and written where not yet present.
        assert!(c.readable("the model", &outputs.join("pruned")).is_ok());
        assert_eq!(c.writable("the output", &outputs.join("run/pruned/.x")).unwrap(), outputs.join("run/pruned/.x"));
        let refused = |r: Result<PathBuf>| r.unwrap_err().to_string();
        let existing = refused(c.readable("the model", &secret.join("key")));
        let absent = refused(c.readable("the model", &secret.join("absent")));
        assert_eq!(existing, absent, "a refusal does not tell whether the file exists");
        assert!(existing.contains("--model-root") && !existing.contains("secret"), "{existing}");
        for bad in [models.join("escape/key"), models.join("../secret/key"), outputs.join("new/../../secret/x"), PathBuf::from("relative/m.gguf")] {
            assert!(c.readable("the model", &bad).is_err(), "{}", bad.display());
        }
        assert!(c.writable("the output", &models.join("m2")).unwrap_err().to_string().contains("--output-root"));
        assert!(Confinement::to_roots(&[root.join("absent")], &[], &[]).unwrap_err().to_string().contains("--model-root"));
        assert_eq!(Confinement::none().writable("x", Path::new("/etc/passwd")).unwrap(), Path::new("/etc/passwd"));
    }
}
