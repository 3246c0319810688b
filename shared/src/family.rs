//! A model family as data: what distinguishes the LLaMA-style decoders llmprune runs. One
//! descriptor per family drives config parsing and writing, parameter counts, the loaders'
//! and the exporter's tensor names, and the layer code; inside llmprune every family uses the
//! canonical LLaMA names and layout (`q_proj`…`down_proj`, rotate-half rotary channels), and
//! the differences are translated at the edges (`worker/src/loader/family.rs`).

/// How a family pairs the channels its rotary embedding rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotaryStyle {
    /// Channel `i` with `i + r/2` (LLaMA's `rotate_half`).
    RotateHalf,
    /// Channel `2i` with `2i + 1` (GLM, GPT-J). Loaded as rotate-half by reordering each
    /// head's rotary channels of q and k (evens, then odds): attention scores are the same
    /// dot products, so nothing else changes; the exporter restores the order.
    Interleaved,
}

/// Whether q/k/v (and o) carry biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkvBias {
    Never,
    Always,
    /// As the config's `attention_bias` says (GLM: q/k/v only, o_proj never).
    FromConfig,
    /// As the config's `attention_bias` says (default none), on q, k, v and o_proj alike
    /// (LLaMA, Qwen3).
    WithOutput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// `model_type` in `config.json`.
    pub model_type: &'static str,
    /// The transformers class `architectures` names.
    pub hf_class: &'static str,
    pub qkv_bias: QkvBias,
    /// The config's `mlp_bias` puts biases on gate, up and down (LLaMA).
    pub mlp_bias: bool,
    /// RMSNorm over each head's channels of q and k, before the rotary embedding (Qwen3).
    pub qk_norm: bool,
    pub rotary: RotaryStyle,
    /// gate and up stored as one `mlp.gate_up_proj` (rows: gate, then up).
    pub fused_gate_up: bool,
    /// The config names its rotary share `partial_rotary_factor` (default 1).
    pub partial_rotary: bool,
    /// Written configs carry `rope_parameters` (transformers 5) rather than `rope_theta`.
    pub rope_parameters: bool,
}

pub const LLAMA: Family = Family {
    model_type: "llama",
    hf_class: "LlamaForCausalLM",
    qkv_bias: QkvBias::WithOutput,
    mlp_bias: true,
    qk_norm: false,
    rotary: RotaryStyle::RotateHalf,
    fused_gate_up: false,
    partial_rotary: false,
    rope_parameters: false,
};
pub const MISTRAL: Family = Family { model_type: "mistral", hf_class: "MistralForCausalLM", qkv_bias: QkvBias::Never, mlp_bias: false, ..LLAMA };
pub const QWEN2: Family = Family { model_type: "qwen2", hf_class: "Qwen2ForCausalLM", qkv_bias: QkvBias::Always, mlp_bias: false, ..LLAMA };
pub const QWEN3: Family = Family { model_type: "qwen3", hf_class: "Qwen3ForCausalLM", qk_norm: true, rope_parameters: true, mlp_bias: false, ..LLAMA };
pub const GLM: Family = Family {
    model_type: "glm",
    hf_class: "GlmForCausalLM",
    qkv_bias: QkvBias::FromConfig,
    mlp_bias: false,
    rotary: RotaryStyle::Interleaved,
    fused_gate_up: true,
    partial_rotary: true,
    rope_parameters: true,
    ..LLAMA
};

/// Canonical row `r` of a `heads × head_dim` q or k projection comes from row `order[r]` of
/// the family's layout: within each head, the first `rotary_dim` channels are reordered
/// evens-then-odds for [`RotaryStyle::Interleaved`]; the rest stay. The identity otherwise.
pub fn rotary_row_order(style: RotaryStyle, heads: usize, head_dim: usize, rotary_dim: usize) -> Vec<usize> {
    (0..heads)
        .flat_map(|h| {
            (0..head_dim).map(move |c| {
                let source = match style {
                    RotaryStyle::Interleaved if c < rotary_dim / 2 => 2 * c,
                    RotaryStyle::Interleaved if c < rotary_dim => 2 * (c - rotary_dim / 2) + 1,
                    _ => c,
                };
                h * head_dim + source
            })
        })
        .collect()
}

/// The inverse of an order: family row `s` comes from canonical row `inverse[s]`.
pub fn inverse_order(order: &[usize]) -> Vec<usize> {
    let mut inverse = vec![0; order.len()];
    for (r, &s) in order.iter().enumerate() {
        inverse[s] = r;
    }
    inverse
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_rotary_channels_become_rotate_half_pairs() {
        // head_dim 8, rotary 4: channels (0,1) and (2,3) rotate together in GLM; canonically
        // pairs are (c, c + 2): rows 0,2 then 1,3, the pass-through 4..8 unchanged.
        assert_eq!(rotary_row_order(RotaryStyle::Interleaved, 1, 8, 4), [0, 2, 1, 3, 4, 5, 6, 7]);
        assert_eq!(rotary_row_order(RotaryStyle::Interleaved, 2, 4, 4), [0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(rotary_row_order(RotaryStyle::RotateHalf, 2, 4, 4), (0..8).collect::<Vec<_>>());
        let order = rotary_row_order(RotaryStyle::Interleaved, 3, 8, 8);
        let inverse = inverse_order(&order);
        assert!((0..24).all(|r| inverse[order[r]] == r));
    }
}
