//! Recovery checkpoints: the adapters, AdamW's moments and step, and the run's history, written
//! at every evaluation and at the end. Data order and dropout masks are functions of (seed,
//! step), so the step is the whole data position and a resumed run continues exactly where the
//! interrupted one was. Each checkpoint is written under a temporary name and renamed; `latest`
//! names the newest one and is itself replaced atomically. The best one by validation loss
//! and the newest two are kept.

use super::optim::AdamW;
use super::recover::StepReport;
use crate::error::{Error, Result};
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const LATEST: &str = "latest";
const TENSORS: &str = "state.safetensors";
const STATE: &str = "state.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: u64,
    /// What makes two runs the same (model, data, options): another run's checkpoint is refused.
    pub fingerprint: String,
    pub steps: Vec<StepReport>,
    pub val_losses: Vec<(u64, f64)>,
    pub trained_tokens: u64,
    pub truncated_records: usize,
    /// sha256 of the adapters' bytes, equal on every rank.
    pub adapter_sha256: String,
}

/// sha256 over the variables' f32 bytes, in order.
pub fn adapter_checksum(vars: &[(String, Var)]) -> Result<String> {
    let mut h = Sha256::new();
    for (name, v) in vars {
        h.update(name.as_bytes());
        for x in v.as_tensor().flatten_all()?.to_vec1::<f32>()? {
            h.update(x.to_le_bytes());
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

pub struct Checkpoints {
    dir: PathBuf,
}

fn step_dir(step: u64) -> String {
    format!("step-{step:08}")
}

impl Checkpoints {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the state of `step` and points `latest` at it.
    pub fn save(&self, state: &TrainState, vars: &[(String, Var)], opt: &AdamW) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let name = step_dir(state.step);
        let tmp = self.dir.join(format!(".{name}.partial"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut tensors: HashMap<String, Tensor> = vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        for (i, (m, v)) in opt.m.iter().zip(&opt.v).enumerate() {
            tensors.insert(format!("optimizer.m.{i}"), m.clone());
            tensors.insert(format!("optimizer.v.{i}"), v.clone());
        }
        tensors.insert("optimizer.step".into(), Tensor::new(&[opt.step as f64], &Device::Cpu)?);
        let file = tmp.join(TENSORS);
        candle_core::safetensors::save(&tensors, &file).map_err(|e| Error::file(&file, e))?;
        let file = tmp.join(STATE);
        let text = serde_json::to_string(state).map_err(|e| Error::file(&file, e))?;
        std::fs::write(&file, text).map_err(|e| Error::io(&file, e))?;
        let target = self.dir.join(&name);
        let _ = std::fs::remove_dir_all(&target);
        std::fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))?;
        let pointer = self.dir.join(format!(".{LATEST}.partial"));
        std::fs::write(&pointer, &name).map_err(|e| Error::io(&pointer, e))?;
        std::fs::rename(&pointer, self.dir.join(LATEST)).map_err(|e| Error::io(self.dir.join(LATEST), e))?;
        self.prune_old(state)
    }

    /// Removes checkpoints other than the newest two and the best by validation loss.
    fn prune_old(&self, state: &TrainState) -> Result<()> {
        let best = best_step(&state.val_losses);
        let mut steps: Vec<u64> = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
            .collect();
        steps.sort_unstable();
        let keep_from = steps.len().saturating_sub(2);
        for (i, s) in steps.iter().enumerate() {
            if i < keep_from && Some(*s) != best {
                let _ = std::fs::remove_dir_all(self.dir.join(step_dir(*s)));
            }
        }
        Ok(())
    }

    /// The newest checkpoint, if any: its state and its tensors.
    pub fn latest(&self) -> Result<Option<(TrainState, HashMap<String, Tensor>)>> {
        let pointer = self.dir.join(LATEST);
        if !pointer.exists() {
            return Ok(None);
        }
        let name = std::fs::read_to_string(&pointer).map_err(|e| Error::io(&pointer, e))?;
        self.read(&self.dir.join(name.trim())).map(Some)
    }

    /// The checkpoint of `step`.
    pub fn at(&self, step: u64) -> Result<(TrainState, HashMap<String, Tensor>)> {
        self.read(&self.dir.join(step_dir(step)))
    }

    fn read(&self, dir: &Path) -> Result<(TrainState, HashMap<String, Tensor>)> {
        let file = dir.join(STATE);
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        let state: TrainState = serde_json::from_str(&text).map_err(|e| Error::file(&file, e))?;
        let file = dir.join(TENSORS);
        let tensors = candle_core::safetensors::load(&file, &Device::Cpu).map_err(|e| Error::file(&file, e))?;
        Ok((state, tensors))
    }
}

/// The step with the lowest validation loss (the latest of equals).
pub fn best_step(val_losses: &[(u64, f64)]) -> Option<u64> {
    val_losses.iter().filter(|(s, _)| *s > 0).min_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0))).map(|(s, _)| *s)
}

/// Restores adapters and optimizer from a checkpoint's tensors.
pub fn restore(tensors: &HashMap<String, Tensor>, vars: &[(String, Var)], opt: &mut AdamW) -> Result<()> {
    let get = |name: &str| tensors.get(name).ok_or_else(|| Error::Invalid(format!("the checkpoint has no `{name}`")));
    for (name, var) in vars {
        let t = get(name)?;
        if t.dims() != var.as_tensor().dims() {
            return Err(Error::Invalid(format!("checkpoint tensor `{name}` has shape {:?}, the adapter {:?}", t.dims(), var.as_tensor().dims())));
        }
        var.set(&t.to_device(var.device())?)?;
    }
    // Checkpoints are read onto the CPU; the optimizer's state lives beside its adapter.
    let on_device = |prefix: &str| -> Result<Vec<Tensor>> {
        vars.iter().enumerate().map(|(i, (_, var))| Ok(get(&format!("{prefix}.{i}"))?.to_device(var.device())?)).collect()
    };
    let (m, v) = (on_device("optimizer.m")?, on_device("optimizer.v")?);
    let step = get("optimizer.step")?.to_vec1::<f64>()?.first().copied().unwrap_or(0.0) as u64;
    opt.restore(m, v, step)
}

/// Sets only the adapters from a checkpoint (the best one, before export).
pub fn restore_adapters(tensors: &HashMap<String, Tensor>, vars: &[(String, Var)]) -> Result<()> {
    for (name, var) in vars {
        let t = tensors.get(name).ok_or_else(|| Error::Invalid(format!("the checkpoint has no `{name}`")))?;
        var.set(&t.to_device(var.device())?)?;
    }
    Ok(())
}

impl Checkpoints {
    /// Removes the directory after a successful run.
    pub fn remove(self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&self.dir, e)),
        }
    }
}
