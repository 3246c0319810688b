//! What each finished phase of `llmprune run` was run with, kept in the run's directory
//! (`OUT/.phases/NAME.json`) so that `--resume` skips a phase only when it would run it the same
//! way again: the same settings, the same model, and the same stamps for the phases it reads
//! from. A finished phase whose stamp differs is refused with the differing keys named (nothing
//! is deleted for the user); its recorded seconds keep the run's time table whole.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A phase as planned: its name and everything its outputs depend on.
#[derive(Clone, Debug, PartialEq)]
pub struct Stamp {
    pub phase: String,
    value: Value,
}

impl Stamp {
    /// `settings` are the phase's job settings (its section, typed); `inputs` the stamps of the
    /// phases whose outputs it reads.
    pub fn new(phase: &str, model: &str, settings: &impl Serialize, inputs: &[&Stamp]) -> Result<Self> {
        let inputs: Vec<Value> = inputs.iter().map(|s| s.value.clone()).collect();
        let value = json!({"phase": phase, "model": model, "settings": serde_json::to_value(settings)?, "inputs": inputs});
        Ok(Self { phase: phase.to_string(), value })
    }

    fn path(&self, out: &Path) -> PathBuf {
        out.join(".phases").join(format!("{}.json", self.phase))
    }

    /// For a phase whose output exists: its recorded seconds when it finished with this stamp;
    /// an error naming what differs otherwise (`output` is the phase's output, for the message).
    pub fn check_finished(&self, out: &Path, output: &Path) -> Result<f64> {
        let path = self.path(out);
        let remove = format!("remove {} (and the outputs of the phases after it) to run it again, or choose another `out`", output.display());
        let recorded: Value = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?,
            Err(_) => bail!("phase `{}` finished before, but without a record of its settings ({} is missing); {remove}", self.phase, path.display()),
        };
        let differences = differences(&recorded["stamp"], &self.value, &self.phase);
        if !differences.is_empty() {
            bail!("phase `{}` finished before with other settings: {}; {remove}", self.phase, differences.join(", "));
        }
        Ok(recorded["seconds"].as_f64().unwrap_or(0.0))
    }

    /// Records that the phase finished, taking `seconds` (written whole, then renamed).
    pub fn write(&self, out: &Path, seconds: f64) -> Result<()> {
        let path = self.path(out);
        let dir = out.join(".phases");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let partial = dir.join(format!(".{}.json.partial", self.phase));
        let text = serde_json::to_string_pretty(&json!({"stamp": self.value, "seconds": seconds}))?;
        std::fs::write(&partial, text + "\n").with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))
    }
}

/// Where `was` and `now` differ, as `key: was → now` with keys in the run's terms: a phase's
/// settings as `section.key`, the model as `model`, an input phase by its name.
fn differences(was: &Value, now: &Value, phase: &str) -> Vec<String> {
    let section = phase.split('-').next().unwrap_or(phase);
    let mut out = Vec::new();
    if was["model"] != now["model"] {
        out.push(format!("model: {} → {}", was["model"], now["model"]));
    }
    let empty = serde_json::Map::new();
    let (a, b) = (was["settings"].as_object().unwrap_or(&empty), now["settings"].as_object().unwrap_or(&empty));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let (x, y) = (a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null));
        if x != y {
            out.push(format!("{section}.{key}: {x} → {y}"));
        }
    }
    if was["inputs"] != now["inputs"] {
        let names: Vec<String> = now["inputs"].as_array().into_iter().flatten().filter_map(|i| i["phase"].as_str().map(|p| format!("`{p}`"))).collect();
        out.push(format!("its input {} was planned with other settings", names.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_is_skipped_only_with_the_stamp_it_finished_with() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path();
        let prune = Stamp::new("prune", "smollm2", &json!({"ratio": 0.25, "criterion": "param-first"}), &[]).unwrap();
        let recover = Stamp::new("recover", "smollm2", &json!({"max_steps": 30}), &[&prune]).unwrap();
        let output = out.join("pruned");
        let e = prune.check_finished(out, &output).unwrap_err().to_string();
        assert!(e.contains("without a record of its settings") && e.contains("remove") && e.contains("pruned"), "{e}");
        prune.write(out, 12.5).unwrap();
        recover.write(out, 30.0).unwrap();
        assert_eq!(prune.check_finished(out, &output).unwrap(), 12.5);
        assert_eq!(recover.check_finished(out, &output).unwrap(), 30.0);

        let other = Stamp::new("prune", "smollm2", &json!({"ratio": 0.5, "criterion": "param-first"}), &[]).unwrap();
        let e = other.check_finished(out, &output).unwrap_err().to_string();
        assert!(e.contains("phase `prune` finished before with other settings: prune.ratio: 0.25 → 0.5;"), "{e}");
        let longer = Stamp::new("recover", "smollm2", &json!({"max_steps": 200}), &[&prune]).unwrap();
        let e = longer.check_finished(out, &output).unwrap_err().to_string();
        assert!(e.contains("recover.max_steps: 30 → 200") && !e.contains("input"), "{e}");
        let downstream = Stamp::new("recover", "smollm2", &json!({"max_steps": 30}), &[&other]).unwrap();
        let e = downstream.check_finished(out, &output).unwrap_err().to_string();
        assert!(e.contains("its input `prune` was planned with other settings"), "{e}");
        let elsewhere = Stamp::new("prune", "other.gguf", &json!({"ratio": 0.25, "criterion": "param-first"}), &[]).unwrap();
        assert!(elsewhere.check_finished(out, &output).unwrap_err().to_string().contains("model: \"smollm2\" → \"other.gguf\""));
    }
}
