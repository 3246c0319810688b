//! One decoder layer: pre-norm attention (GQA, RoPE) and a SwiGLU MLP, each residual.

use super::{load_checked as load_weight, Exec};
use crate::error::Result;
use crate::loader::WeightSource;
use crate::lora::{LayerAdapters, Projection};
use crate::ops::{self, CachedKv};
use candle_core::{DType, Device, Tensor};
use llmprune_shared::{LayerShape, ModelSpec};

pub struct Attention {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub o: Tensor,
    /// q/k/v biases (Qwen2-style), all or none.
    pub qkv_bias: Option<[Tensor; 3]>,
    /// o_proj's bias (LLaMA's `attention_bias`, or bias compensation).
    pub o_bias: Option<Tensor>,
    /// RMSNorm weights over each head's channels of q and k (Qwen3), both or none.
    pub qk_norm: Option<[Tensor; 2]>,
}

pub struct Mlp {
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
    /// gate/up/down biases (LLaMA's `mlp_bias`, or bias compensation), all or none.
    pub biases: Option<[Tensor; 3]>,
}

/// Where the real tokens of a right-padded `[rows, slots]` batch are: packing keeps them
/// (`[N, …]`), unpacking puts them back in their slots with zeros in the padding.
pub struct Packing {
    pub rows: usize,
    pub slots: usize,
    /// Real tokens of each row.
    pub lens: Vec<usize>,
    /// Slot (`row · slots + position`) of each real token, in order.
    real: Tensor,
    /// Packed index of each slot's token; padding points at an extra zero row (index N).
    slot_source: Tensor,
    n: usize,
}

impl Packing {
    /// The packing of rows with `lens` real tokens each (a prefix of `slots`).
    pub fn new(lens: &[usize], slots: usize, device: &Device) -> Result<Self> {
        let n: usize = lens.iter().sum();
        let mut real = Vec::with_capacity(n);
        let mut slot_source = vec![n as u32; lens.len() * slots];
        for (r, &len) in lens.iter().enumerate() {
            for p in 0..len {
                slot_source[r * slots + p] = real.len() as u32;
                real.push((r * slots + p) as u32);
            }
        }
        Ok(Self {
            rows: lens.len(),
            slots,
            lens: lens.to_vec(),
            real: Tensor::from_vec(real, n, device)?,
            slot_source: Tensor::from_vec(slot_source, lens.len() * slots, device)?,
            n,
        })
    }

    /// `[rows·slots, W]` → `[N, W]`.
    pub fn pack(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.index_select(&self.real, 0)?)
    }

    /// `[N, W]` → `[rows·slots, W]`, zeros in the padding.
    pub fn unpack(&self, x: &Tensor) -> Result<Tensor> {
        let zero = Tensor::zeros((1, x.dim(1)?), x.dtype(), x.device())?;
        Ok(Tensor::cat(&[x, &zero], 0)?.index_select(&self.slot_source, 0)?)
    }

    /// Packed `[N, heads·d]` → `[rows, heads, slots, d]`, zeros in the padding.
    pub fn padded_heads(&self, x: &Tensor, heads: usize, d: usize) -> Result<Tensor> {
        Ok(self.unpack(x)?.reshape((self.rows, self.slots, heads, d))?.transpose(1, 2)?.contiguous()?)
    }

    /// Real tokens.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// Sees a projection's input `[N, in]` during a forward pass.
pub type ProjectionTap<'a> = &'a mut dyn FnMut(Projection, &Tensor) -> Result<()>;

pub struct DecoderLayer {
    pub index: usize,
    pub shape: LayerShape,
    pub head_dim: usize,
    /// The first channels of each head the rotary embedding rotates; the rest pass.
    pub rotary_dim: usize,
    pub input_norm: Tensor,
    pub attn: Attention,
    pub post_norm: Tensor,
    pub mlp: Mlp,
    /// LoRA adapters on its projections, while recovering.
    pub lora: Option<LayerAdapters>,
}

pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, exec: Exec) -> Result<Tensor> {
    Ok(match exec {
        Exec::Inference if x.dtype() != DType::F32 => {
            // As Hugging Face's LlamaRMSNorm: normalise in f32, round once to the model's
            // dtype, then scale. candle's half-precision kernel rounds the row's RMS first,
            // which scales a whole row by up to 0.4% (bf16) and cost 0.15% of PTB perplexity.
            let ones = Tensor::ones(x.dim(candle_core::D::Minus1)?, DType::F32, x.device())?;
            let normed = candle_nn::ops::rms_norm(&x.to_dtype(DType::F32)?.contiguous()?, &ones, eps as f32)?;
            normed.to_dtype(x.dtype())?.broadcast_mul(w)?
        }
        Exec::Inference => candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?,
        Exec::Differentiable => ops::rms_norm(x, w, eps)?,
    })
}

/// `x W^T` for `x` of shape `[N, in]`. A weight without a gradient (a LoRA base weight)
/// under a differentiable input skips its gradient's matmul.
fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(if x.track_op() && !w.track_op() { ops::frozen_linear(x, w)? } else { x.matmul(&w.t()?)? })
}

/// How packed inference attends: the CPU kernel over exactly the keys each query sees, or
/// batched matmuls over the padded layout (any device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionPath {
    Packed,
    Padded,
}

impl AttentionPath {
    pub fn for_device(device: &Device) -> Self {
        if device.is_cpu() {
            AttentionPath::Packed
        } else {
            AttentionPath::Padded
        }
    }
}

/// Rows `rows` of a cache tensor `[C, …]` (itself when they are all its rows in order).
pub(crate) fn cache_rows(t: &Tensor, rows: &[usize]) -> Result<Tensor> {
    if rows.len() == t.dim(0)? && rows.iter().enumerate().all(|(a, &b)| a == b) {
        return Ok(t.clone());
    }
    let idx = Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), t.device())?;
    Ok(t.index_select(&idx, 0)?)
}

/// The additive mask of rows continuing after `past_lens` real positions of `past` cached
/// ones, with `t` new positions each: a query sees the real cached positions and the new
/// ones up to itself. `[B, 1, rep·T, past + T]`, query row `r` being position `r mod T`.
fn continuation_mask(past_lens: &[usize], past: usize, t: usize, rep: usize, device: &Device) -> Result<Tensor> {
    let b = past_lens.len();
    let keys = past + t;
    let mut m = vec![0f32; b * rep * t * keys];
    for (row, &pl) in past_lens.iter().enumerate() {
        for r in 0..rep * t {
            let i = r % t;
            let line = &mut m[(row * rep * t + r) * keys..][..keys];
            for (j, x) in line.iter_mut().enumerate() {
                let visible = if j < past { j < pl } else { j - past <= i };
                if !visible {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
    }
    Ok(Tensor::from_vec(m, (b, 1, rep * t, keys), device)?)
}

/// Additive mask for GQA-folded score rows: row `r` is query position `r % q_len`.
fn causal_mask(rows: usize, q_len: usize, keys: usize, device: &Device) -> Result<Tensor> {
    let offset = keys - q_len;
    let mask: Vec<f32> = (0..rows).flat_map(|r| (0..keys).map(move |j| if j > offset + r % q_len { f32::NEG_INFINITY } else { 0.0 })).collect();
    Ok(Tensor::from_vec(mask, (rows, keys), device)?)
}

impl DecoderLayer {
    pub fn load(spec: &ModelSpec, index: usize, src: &dyn WeightSource, device: &Device, dtype: DType) -> Result<Self> {
        let shape = spec.layers[index];
        let (h, d) = (spec.hidden_size, spec.head_dim);
        let (q_out, kv_out) = (shape.n_heads * d, shape.n_kv_heads * d);
        let p = format!("model.layers.{index}");
        let w = |name: &str, dims: &[usize]| load_weight(src, &format!("{p}.{name}"), dims, device, dtype);
        let qkv_bias = if spec.attention_bias {
            Some([w("self_attn.q_proj.bias", &[q_out])?, w("self_attn.k_proj.bias", &[kv_out])?, w("self_attn.v_proj.bias", &[kv_out])?])
        } else {
            None
        };
        let o_bias = if spec.o_bias { Some(w("self_attn.o_proj.bias", &[h])?) } else { None };
        let mlp_biases = if spec.mlp_bias {
            let inter = shape.intermediate_size;
            Some([w("mlp.gate_proj.bias", &[inter])?, w("mlp.up_proj.bias", &[inter])?, w("mlp.down_proj.bias", &[h])?])
        } else {
            None
        };
        let qk_norm = if spec.architecture.family().qk_norm { Some([w("self_attn.q_norm.weight", &[d])?, w("self_attn.k_norm.weight", &[d])?]) } else { None };
        Ok(Self {
            index,
            shape,
            head_dim: d,
            rotary_dim: spec.rotary_dim,
            input_norm: w("input_layernorm.weight", &[h])?,
            attn: Attention {
                q: w("self_attn.q_proj.weight", &[q_out, h])?,
                k: w("self_attn.k_proj.weight", &[kv_out, h])?,
                v: w("self_attn.v_proj.weight", &[kv_out, h])?,
                o: w("self_attn.o_proj.weight", &[h, q_out])?,
                qkv_bias,
                o_bias,
                qk_norm,
            },
            post_norm: w("post_attention_layernorm.weight", &[h])?,
            mlp: Mlp {
                gate: w("mlp.gate_proj.weight", &[shape.intermediate_size, h])?,
                up: w("mlp.up_proj.weight", &[shape.intermediate_size, h])?,
                down: w("mlp.down_proj.weight", &[h, shape.intermediate_size])?,
                biases: mlp_biases,
            },
            lora: None,
        })
    }

    /// A projection's weight `[out, in]`.
    pub fn projection_weight(&self, p: Projection) -> &Tensor {
        match p {
            Projection::Q => &self.attn.q,
            Projection::K => &self.attn.k,
            Projection::V => &self.attn.v,
            Projection::O => &self.attn.o,
            Projection::Gate => &self.mlp.gate,
            Projection::Up => &self.mlp.up,
            Projection::Down => &self.mlp.down,
        }
    }

    pub fn projection_weight_mut(&mut self, p: Projection) -> &mut Tensor {
        match p {
            Projection::Q => &mut self.attn.q,
            Projection::K => &mut self.attn.k,
            Projection::V => &mut self.attn.v,
            Projection::O => &mut self.attn.o,
            Projection::Gate => &mut self.mlp.gate,
            Projection::Up => &mut self.mlp.up,
            Projection::Down => &mut self.mlp.down,
        }
    }

    /// A projection's bias `[out]`, if it has one.
    pub fn projection_bias(&self, p: Projection) -> Option<&Tensor> {
        let (a, m) = (&self.attn, &self.mlp);
        match p {
            Projection::Q => a.qkv_bias.as_ref().map(|b| &b[0]),
            Projection::K => a.qkv_bias.as_ref().map(|b| &b[1]),
            Projection::V => a.qkv_bias.as_ref().map(|b| &b[2]),
            Projection::O => a.o_bias.as_ref(),
            Projection::Gate => m.biases.as_ref().map(|b| &b[0]),
            Projection::Up => m.biases.as_ref().map(|b| &b[1]),
            Projection::Down => m.biases.as_ref().map(|b| &b[2]),
        }
    }

    /// `x Wᵀ (+ b)` of projection `p` for `x` `[N, in]`, plus its adapter's term if it has one.
    fn project(&self, x: &Tensor, p: Projection) -> Result<Tensor> {
        let bias = self.projection_bias(p);
        let w = self.projection_weight(p);
        let adapted = self.lora.as_ref().map(|l| l.project(self.index, p, x, w)).transpose()?.flatten();
        let y = match adapted {
            Some(y) => y,
            None => linear(x, w)?,
        };
        Ok(match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// The canonical names of the layer's weights, in the order `named_weights` and
    /// `named_weights_mut` list the tensors.
    fn names(&self) -> Vec<String> {
        const ALWAYS: [&str; 9] = [
            "input_layernorm.weight",
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "post_attention_layernorm.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ];
        const BIASES: [&str; 3] = ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"];
        const O_BIAS: [&str; 1] = ["self_attn.o_proj.bias"];
        const MLP_BIASES: [&str; 3] = ["mlp.gate_proj.bias", "mlp.up_proj.bias", "mlp.down_proj.bias"];
        const QK_NORMS: [&str; 2] = ["self_attn.q_norm.weight", "self_attn.k_norm.weight"];
        let biases = self.attn.qkv_bias.as_ref().map_or(&[][..], |_| &BIASES[..]);
        let o_bias = self.attn.o_bias.as_ref().map_or(&[][..], |_| &O_BIAS[..]);
        let mlp_biases = self.mlp.biases.as_ref().map_or(&[][..], |_| &MLP_BIASES[..]);
        let norms = self.attn.qk_norm.as_ref().map_or(&[][..], |_| &QK_NORMS[..]);
        ALWAYS.iter().chain(biases).chain(o_bias).chain(mlp_biases).chain(norms).map(|n| format!("model.layers.{}.{n}", self.index)).collect()
    }

    pub fn named_weights(&self) -> Vec<(String, &Tensor)> {
        let a = &self.attn;
        let mut tensors = vec![&self.input_norm, &a.q, &a.k, &a.v, &a.o, &self.post_norm, &self.mlp.gate, &self.mlp.up, &self.mlp.down];
        tensors.extend(a.qkv_bias.iter().flatten());
        tensors.extend(a.o_bias.iter());
        tensors.extend(self.mlp.biases.iter().flatten());
        tensors.extend(a.qk_norm.iter().flatten());
        self.names().into_iter().zip(tensors).collect()
    }

    pub fn named_weights_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let names = self.names();
        let a = &mut self.attn;
        let mut tensors =
            vec![&mut self.input_norm, &mut a.q, &mut a.k, &mut a.v, &mut a.o, &mut self.post_norm, &mut self.mlp.gate, &mut self.mlp.up, &mut self.mlp.down];
        tensors.extend(a.qkv_bias.iter_mut().flatten());
        tensors.extend(a.o_bias.iter_mut());
        tensors.extend(self.mlp.biases.iter_mut().flatten());
        tensors.extend(a.qk_norm.iter_mut().flatten());
        names.into_iter().zip(tensors).collect()
    }

    /// q or k `[…, heads, d]`-shaped with heads last-but-one: its per-head RMSNorm (Qwen3),
    /// then the rotary embedding `rope` on the first `rotary_dim` channels of each head.
    fn position(&self, x: &Tensor, norm: Option<&Tensor>, eps: f64, exec: Exec, rope: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let x = match norm {
            Some(w) => rms_norm(x, w, eps, exec)?,
            None => x.clone(),
        };
        let d = x.dim(candle_core::D::Minus1)?;
        if self.rotary_dim == d {
            return rope(&x);
        }
        let rotated = rope(&x.narrow(candle_core::D::Minus1, 0, self.rotary_dim)?.contiguous()?)?;
        Ok(Tensor::cat(&[&rotated, &x.narrow(candle_core::D::Minus1, self.rotary_dim, d - self.rotary_dim)?], candle_core::D::Minus1)?.contiguous()?)
    }

    /// `x` is `[B, T, H]`; `cos`/`sin` are the tables for positions `0..T`.
    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, eps: f64, exec: Exec) -> Result<Tensor> {
        self.forward_tapped(x, cos, sin, eps, exec, &mut |_, _| Ok(()))
    }

    /// [`DecoderLayer::forward`], handing `tap` the inputs `[B·T, in]` of o_proj and down_proj
    /// (the consumers of heads and neurons) as they are computed.
    pub fn forward_tapped(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, eps: f64, exec: Exec, tap: ProjectionTap) -> Result<Tensor> {
        let h = rms_norm(x, &self.input_norm, eps, exec)?;
        let x = (x + self.attention(&h, cos, sin, eps, exec, tap)?)?;
        let h = rms_norm(&x, &self.post_norm, eps, exec)?;
        Ok((&x + self.mlp(&h, exec, tap)?)?)
    }

    fn attention(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, eps: f64, exec: Exec, tap: ProjectionTap) -> Result<Tensor> {
        let (b, t, hidden) = x.dims3()?;
        let (d, nh, nkv) = (self.head_dim, self.shape.n_heads, self.shape.n_kv_heads);
        let rep = self.shape.n_rep();
        let x2 = x.reshape((b * t, hidden))?;
        let heads = |p: Projection, n: usize| -> Result<Tensor> { Ok(self.project(&x2, p)?.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?) };
        let q = heads(Projection::Q, nh)?;
        let k = heads(Projection::K, nkv)?;
        let v = heads(Projection::V, nkv)?;
        let rope = |x: &Tensor| -> Result<Tensor> {
            Ok(match exec {
                Exec::Inference => candle_nn::rotary_emb::rope(x, cos, sin)?,
                Exec::Differentiable => ops::rope(x, cos, sin)?,
            })
        };
        let [q_norm, k_norm] = self.attn.qk_norm.as_ref().map_or([None, None], |[a, b]| [Some(a), Some(b)]);
        let q = self.position(&q, q_norm, eps, exec, rope)?;
        let k = self.position(&k, k_norm, eps, exec, rope)?;
        // The n_rep query heads of a KV head are adjacent: fold them into the row axis so
        // one batched matmul serves the group and KV heads are never copied.
        let q = q.reshape((b, nkv, rep * t, d))?;
        let scores = q.matmul(&k.t()?)?;
        let scale = 1.0 / (d as f64).sqrt();
        let probs = match exec {
            Exec::Inference => {
                // In f32 whatever the model's dtype, as Hugging Face's attention does: candle's
                // half-precision softmax sums the exponentials in half precision.
                let mask = causal_mask(rep * t, t, t, x.device())?;
                let scores = (scores.to_dtype(DType::F32)? * scale)?.broadcast_add(&mask)?;
                candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?
            }
            Exec::Differentiable => ops::causal_softmax(&scores, scale, t)?,
        };
        let out = probs.matmul(&v)?.reshape((b, nh, t, d))?.transpose(1, 2)?.reshape((b * t, nh * d))?;
        tap(Projection::O, &out)?;
        Ok(self.project(&out, Projection::O)?.reshape((b, t, hidden))?)
    }

    /// Inference over new positions after cached ones, the new tokens packed: `x` is `[N, H]`,
    /// the real tokens of `B` rows of `T` slots (`pack`), so the projections and the MLP never
    /// see padding. `cos`/`sin` are the rotary tables of each token's position `[N, d/2]`;
    /// `past` the cached keys and values each row continues. Returns the packed output and,
    /// when `keep`, the keys and values of every row's cached and new positions
    /// `[B, n_kv, P + T, d]`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_packed(
        &self,
        x: &Tensor,
        pack: &Packing,
        cos: &Tensor,
        sin: &Tensor,
        past: Option<CachedKv>,
        keep: bool,
        path: AttentionPath,
        eps: f64,
    ) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
        let exec = Exec::Inference;
        let n = pack.len();
        let (d, nh, nkv) = (self.head_dim, self.shape.n_heads, self.shape.n_kv_heads);
        let h = rms_norm(x, &self.input_norm, eps, exec)?;
        let [q_norm, k_norm] = self.attn.qk_norm.as_ref().map_or([None, None], |[a, b]| [Some(a), Some(b)]);
        let roped = |p: Projection, heads: usize, norm: Option<&Tensor>| -> Result<Tensor> {
            let y = self.project(&h, p)?.reshape((1, n, heads, d))?;
            let rope = |x: &Tensor| -> Result<Tensor> { Ok(candle_nn::rotary_emb::rope_thd(x, cos, sin)?) };
            Ok(self.position(&y, norm, eps, exec, rope)?.reshape((n, heads * d))?)
        };
        let (q, k, v) = (roped(Projection::Q, nh, q_norm)?, roped(Projection::K, nkv, k_norm)?, self.project(&h, Projection::V)?);
        let scale = 1.0 / (d as f64).sqrt();
        let (out, kv) = match path {
            AttentionPath::Packed => {
                let heads = ops::Heads { n_heads: nh, n_kv: nkv, head_dim: d };
                let out = ops::packed_attention(&q, &k, &v, &pack.lens, past, heads, scale as f32)?;
                (out, if keep { Some(self.continued(pack, &k, &v, past)?) } else { None })
            }
            AttentionPath::Padded => {
                let (k, v) = self.continued(pack, &k, &v, past)?;
                (self.padded_attention(&q, &k, &v, pack, past, scale)?, keep.then_some((k, v)))
            }
        };
        let x = (x + self.project(&out, Projection::O)?)?;
        let h = rms_norm(&x, &self.post_norm, eps, exec)?;
        let x = (&x + self.mlp(&h.unsqueeze(0)?, exec, &mut |_, _| Ok(()))?.reshape((n, x.dim(1)?))?)?;
        Ok((x, kv))
    }

    /// Every row's cached keys and values followed by its new ones (packed `k`, `v`), in the
    /// padded layout `[B, n_kv, P + T, d]`.
    fn continued(&self, pack: &Packing, k: &Tensor, v: &Tensor, past: Option<CachedKv>) -> Result<(Tensor, Tensor)> {
        let (d, nkv) = (self.head_dim, self.shape.n_kv_heads);
        let (k, v) = (pack.padded_heads(k, nkv, d)?, pack.padded_heads(v, nkv, d)?);
        Ok(match past {
            Some(p) => (Tensor::cat(&[&cache_rows(p.k, p.rows)?, &k], 2)?.contiguous()?, Tensor::cat(&[&cache_rows(p.v, p.rows)?, &v], 2)?.contiguous()?),
            None => (k, v),
        })
    }

    /// [`AttentionPath::Padded`]: the packed queries back in their rows' slots against every
    /// row's keys and values ([`DecoderLayer::continued`]), batched matmuls under a mask.
    fn padded_attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, pack: &Packing, past: Option<CachedKv>, scale: f64) -> Result<Tensor> {
        let (b, t) = (pack.rows, pack.slots);
        let (d, nh, nkv) = (self.head_dim, self.shape.n_heads, self.shape.n_kv_heads);
        let rep = self.shape.n_rep();
        let q = pack.padded_heads(q, nh, d)?.reshape((b, nkv, rep * t, d))?;
        let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
        // candle's ops only: this path serves devices the CPU kernels do not.
        let mask = match past {
            Some(p) => continuation_mask(p.lens, p.k.dim(2)?, t, rep, q.device())?,
            None => causal_mask(rep * t, t, t, q.device())?,
        };
        let probs = candle_nn::ops::softmax_last_dim(&(scores * scale)?.broadcast_add(&mask)?)?.to_dtype(v.dtype())?;
        let out = probs.matmul(v)?.reshape((b, nh, t, d))?.transpose(1, 2)?.reshape((b * t, nh * d))?;
        pack.pack(&out)
    }

    fn mlp(&self, x: &Tensor, exec: Exec, tap: ProjectionTap) -> Result<Tensor> {
        let (b, t, hidden) = x.dims3()?;
        let x2 = x.reshape((b * t, hidden))?;
        let (gate, up) = (self.project(&x2, Projection::Gate)?, self.project(&x2, Projection::Up)?);
        let act = match exec {
            Exec::Inference => ops::swiglu_inference(&gate, &up)?,
            Exec::Differentiable => ops::swiglu(&gate, &up)?,
        };
        tap(Projection::Down, &act)?;
        Ok(self.project(&act, Projection::Down)?.reshape((b, t, hidden))?)
    }
}
