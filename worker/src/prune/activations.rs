//! Statistics of the inputs of the projections that consume heads and neurons (o_proj reads
//! the heads' outputs, down_proj the neurons'), over the calibration tokens: the token count,
//! the sum of each input channel and the Gram matrix `XᵀX`, accumulated in f32 on the model's
//! device. All three are sums over tokens, so data-parallel replicas that split the windows
//! all-reduce them; each pipeline stage keeps its own layers'. From them come the activation
//! criteria (`activation_scores`) and the least-squares reconstruction (`reconstruct`).

use super::statistics::all_reduce_by_name;
use crate::cluster::shard::Collectives;
use crate::collective::part;
use crate::error::{Error, Result};
use crate::lora::Projection;
use crate::model::LlamaModel;
use crate::stage::stage_forward_tapped;
use candle_core::{DType, Tensor};
use std::collections::HashMap;

/// Windows per forward pass: bounds the activations a pass holds.
pub const WINDOWS_PER_PASS: usize = 8;

/// One consumer's input statistics over `tokens` calibration tokens.
pub struct InputStats {
    pub tokens: usize,
    /// `Σ_t x_t`, `[in]`, f32.
    pub sum: Tensor,
    /// `Σ_t x_t x_tᵀ`, `[in, in]`, f32.
    pub gram: Tensor,
}

/// By the consuming weight's name (`model.layers.{i}.self_attn.o_proj.weight`, `….mlp.down_proj.weight`).
pub type ActivationStats = HashMap<String, InputStats>;

/// Input statistics a step's scoring gathered, kept for the same step's cut: the windows they
/// were gathered over and the statistics. A cut over the same windows takes them instead of
/// gathering again (the same bits: the gathering is deterministic); cutting drops them.
pub struct GatheredInputs {
    pub windows: Vec<Vec<u32>>,
    pub stats: ActivationStats,
}

/// The weight whose input a tapped projection of layer `layer` reads.
pub fn consumer_weight(layer: usize, projection: Projection) -> Option<String> {
    match projection {
        Projection::O => Some(format!("model.layers.{layer}.self_attn.o_proj.weight")),
        Projection::Down => Some(format!("model.layers.{layer}.mlp.down_proj.weight")),
        _ => None,
    }
}

/// Whether `name` is a consumer's weight (o_proj or down_proj of some layer).
pub fn is_consumer_weight(name: &str) -> bool {
    name.starts_with("model.layers.") && (name.ends_with(".self_attn.o_proj.weight") || name.ends_with(".mlp.down_proj.weight"))
}

/// The input statistics of the consumers `wanted` accepts, over this replica's share of
/// `windows` (equal lengths) through the pipeline, all-reduced over the replicas. Every stage
/// of every replica calls this with the same windows: hidden states flow through all of them.
/// `progress` gets (passes done, passes in all).
pub fn gather_activation_stats(
    model: &LlamaModel,
    comms: &mut Collectives,
    windows: &[Vec<u32>],
    wanted: &dyn Fn(&str) -> bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ActivationStats> {
    let len = windows.first().map(Vec::len).ok_or_else(|| Error::Invalid("no calibration windows".into()))?;
    if windows.iter().any(|w| w.len() != len) {
        return Err(Error::Invalid("calibration windows differ in length".into()));
    }
    let (replica, copies) = (comms.replicas.rank(), comms.replicas.world_size());
    if windows.len() < copies {
        return Err(Error::Invalid(format!("{} calibration windows for {copies} replicas: each needs at least one", windows.len())));
    }
    let mine = &windows[part(windows.len(), copies, replica)];
    let mut stats = ActivationStats::new();
    let passes = mine.len().div_ceil(WINDOWS_PER_PASS);
    for (done, batch) in mine.chunks(WINDOWS_PER_PASS).enumerate() {
        let ids = Tensor::from_vec(batch.concat(), (batch.len(), len), model.device())?;
        let mut tap = |layer: usize, projection: Projection, x: &Tensor| -> Result<()> {
            let Some(name) = consumer_weight(layer, projection).filter(|n| wanted(n)) else {
                return Ok(());
            };
            let x = x.to_dtype(DType::F32)?;
            let (sum, gram) = (x.sum(0)?, x.t()?.matmul(&x)?);
            match stats.get_mut(&name) {
                Some(s) => {
                    s.tokens += x.dim(0)?;
                    s.sum = (&s.sum + sum)?;
                    s.gram = (&s.gram + gram)?;
                }
                None => {
                    stats.insert(name, InputStats { tokens: x.dim(0)?, sum, gram });
                }
            }
            Ok(())
        };
        stage_forward_tapped(model, comms.pipeline.as_mut(), &ids, &mut tap)?;
        progress(done + 1, passes);
    }
    if copies == 1 {
        return Ok(stats);
    }
    let (mut sums, mut grams) = (HashMap::new(), HashMap::new());
    for (name, s) in stats {
        sums.insert(name.clone(), s.sum);
        grams.insert(name, s.gram);
    }
    let sums = all_reduce_by_name(sums, "input sums", comms.replicas.as_mut())?;
    let mut grams = all_reduce_by_name(grams, "input Gram matrix", comms.replicas.as_mut())?;
    let tokens = windows.len() * len;
    sums.into_iter()
        .map(|(name, sum)| {
            let gram = grams.remove(&name).ok_or_else(|| Error::Invalid(format!("no Gram matrix of {name}")))?;
            Ok((name, InputStats { tokens, sum, gram }))
        })
        .collect()
}
