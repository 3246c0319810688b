//! Statistics of the inputs of the projections that consume heads and neurons (o_proj reads
//! the heads' outputs, down_proj the neurons'), over the calibration tokens: the token count,
//! the sum of each input channel and the Gram matrix `XᵀX`, accumulated in f32 on the model's
//! device. All three are sums over tokens, so data-parallel replicas that split the windows
//! all-reduce them; each pipeline stage gathers its own layers', a layer at a time. From them
//! come the activation criteria (`activation_scores`) and the least-squares reconstruction
//! (`reconstruct`).

use super::statistics::all_reduce_by_name;
use crate::cluster::shard::Collectives;
use crate::collective::{part, Communicator};
use crate::error::{Error, Result};
use crate::lora::Projection;
use crate::model::{Exec, LlamaModel};
use crate::stage::stage_forward_layer_major;
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

/// Input statistics a step's scoring gathered, kept for the same step's cut when they fit
/// beside the weights ([`fit_beside_weights`]): the windows they were gathered over and the
/// statistics. A cut over the same windows takes them instead of gathering again (the same
/// bits: the gathering is deterministic); cutting drops them.
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
/// `windows` (equal lengths) through the pipeline, all-reduced over the replicas, handed to
/// `visit` one layer of this stage at a time (the consumers of that layer that `wanted`
/// accepts; none for a layer without them): the batches go through the stage layer by layer
/// ([`stage_forward_layer_major`]), so only one layer's Gram matrices exist at once (a LLaMA-7B
/// layer's are 0.55 GB in f32, its 32 layers' 17.6 GB). Every stage of every replica calls this
/// with the same windows: hidden states flow through all of them. `progress` gets (passes
/// done, passes in all), a pass being every layer over one batch of windows.
pub fn visit_activation_stats(
    model: &LlamaModel,
    comms: &mut Collectives,
    windows: &[Vec<u32>],
    wanted: &dyn Fn(&str) -> bool,
    progress: &mut dyn FnMut(usize, usize),
    visit: &mut dyn FnMut(ActivationStats) -> Result<()>,
) -> Result<()> {
    let len = windows.first().map(Vec::len).ok_or_else(|| Error::Invalid("no calibration windows".into()))?;
    if windows.iter().any(|w| w.len() != len) {
        return Err(Error::Invalid("calibration windows differ in length".into()));
    }
    let (replica, copies) = (comms.replicas.rank(), comms.replicas.world_size());
    if windows.len() < copies {
        return Err(Error::Invalid(format!("{} calibration windows for {copies} replicas: each needs at least one", windows.len())));
    }
    let mine = &windows[part(windows.len(), copies, replica)];
    let batches = mine.chunks(WINDOWS_PER_PASS).map(|b| Ok(Tensor::from_vec(b.concat(), (b.len(), len), model.device())?)).collect::<Result<Vec<_>>>()?;
    let (passes, layers) = (batches.len(), model.layers.len());
    let replicas = comms.replicas.as_mut();
    let mut layer = |position: usize, hidden: &mut [Tensor]| -> Result<()> {
        let mut stats = ActivationStats::new();
        for (done, x) in hidden.iter_mut().enumerate() {
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
            *x = model.forward_layer_tapped(position, x, Exec::Inference, &mut tap)?;
            // Whole passes' worth of the layer steps done so far.
            progress((position * passes + done + 1) / layers, passes);
        }
        visit(all_reduce_input_stats(stats, windows.len() * len, replicas)?)
    };
    stage_forward_layer_major(model, comms.pipeline.as_mut(), &batches, &mut layer)
}

/// [`visit_activation_stats`]'s statistics of every layer at once.
pub fn gather_activation_stats(
    model: &LlamaModel,
    comms: &mut Collectives,
    windows: &[Vec<u32>],
    wanted: &dyn Fn(&str) -> bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ActivationStats> {
    let mut all = ActivationStats::new();
    visit_activation_stats(model, comms, windows, wanted, progress, &mut |layer| {
        all.extend(layer);
        Ok(())
    })?;
    Ok(all)
}

/// Replicas' statistics summed (each replica's share of `tokens` tokens), in name order.
fn all_reduce_input_stats(stats: ActivationStats, tokens: usize, replicas: &mut dyn Communicator) -> Result<ActivationStats> {
    if replicas.world_size() == 1 {
        return Ok(stats);
    }
    let (mut sums, mut grams) = (HashMap::new(), HashMap::new());
    for (name, s) in stats {
        sums.insert(name.clone(), s.sum);
        grams.insert(name, s.gram);
    }
    let sums = all_reduce_by_name(sums, "input sums", replicas)?;
    let mut grams = all_reduce_by_name(grams, "input Gram matrix", replicas)?;
    sums.into_iter()
        .map(|(name, sum)| {
            let gram = grams.remove(&name).ok_or_else(|| Error::Invalid(format!("no Gram matrix of {name}")))?;
            Ok((name, InputStats { tokens, sum, gram }))
        })
        .collect()
}

/// Whether the input statistics of the consumers `wanted` accepts may all be kept at once
/// beside this stage's `weights` (from a step's scoring for its cut): see [`statistics_fit`].
pub fn fit_beside_weights(weights: &HashMap<String, Tensor>, wanted: &dyn Fn(&str) -> bool) -> bool {
    statistics_fit(weights.iter().map(|(name, w)| (wanted(name), w.dims().to_vec(), w.dtype())))
}

/// Whether the f32 statistics (sum and Gram matrix of the inputs) of the consumers among
/// `tensors` (consumer or not, dims, dtype) take no more memory than all the tensors do.
/// SmolLM2's (0.32 GB beside 0.51 GB of f32 weights) do; LLaMA-7B's (17.6 GB beside 13.5 GB
/// in bf16) do not, and a cut then gathers them again, a layer at a time.
pub fn statistics_fit(tensors: impl IntoIterator<Item = (bool, Vec<usize>, DType)>) -> bool {
    let (mut statistics, mut weights) = (0usize, 0usize);
    for (consumer, dims, dtype) in tensors {
        weights += dims.iter().product::<usize>() * dtype.size_in_bytes();
        if let (true, Some(&inputs)) = (consumer, dims.get(1)) {
            statistics += (inputs * inputs + inputs) * DType::F32.size_in_bytes();
        }
    }
    statistics <= weights
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One decoder layer's tensors (q, k, v, o, gate, up, down; norms left out), consumers marked.
    fn layer(hidden: usize, kv: usize, inter: usize, dtype: DType) -> Vec<(bool, Vec<usize>, DType)> {
        let shapes = [
            (false, [hidden, hidden]),
            (false, [kv, hidden]),
            (false, [kv, hidden]),
            (true, [hidden, hidden]),
            (false, [inter, hidden]),
            (false, [inter, hidden]),
            (true, [hidden, inter]),
        ];
        shapes.iter().map(|(c, d)| (*c, d.to_vec(), dtype)).collect()
    }

    #[test]
    fn statistics_are_kept_beside_smollm2_in_f32_but_not_beside_llama_7b_in_bf16() {
        // SmolLM2: a layer's weights 3,538,944 f32 values (14.2 MB), its statistics
        // 576² + 576 + 1536² + 1536 = 2,693,184 f32 values (10.8 MB).
        assert!(statistics_fit(layer(576, 192, 1536, DType::F32)));
        // LLaMA-7B: 202.4M bf16 values (404.8 MB), statistics 138.0M f32 values (551.9 MB);
        // the embeddings and head (2 × 32000 × 4096 bf16, 524 MB) do not make up 32 layers' lack.
        let mut seven_b: Vec<_> = (0..32).flat_map(|_| layer(4096, 4096, 11008, DType::BF16)).collect();
        seven_b.extend([(false, vec![32000, 4096], DType::BF16), (false, vec![32000, 4096], DType::BF16)]);
        assert!(!statistics_fit(seven_b.clone()));
        // In f32 its weights are twice as large: then they fit.
        assert!(statistics_fit(seven_b.into_iter().map(|(c, d, _)| (c, d, DType::F32))));
        // Only what is wanted counts.
        assert!(statistics_fit(layer(4096, 4096, 11008, DType::BF16).into_iter().map(|(_, d, t)| (false, d, t))));
    }
}
