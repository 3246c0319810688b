//! Which part of the model a worker holds: a contiguous range of decoder layers (the
//! embedding on the first pipeline stage, the final norm and head on the last), as one
//! replica of its stage. The coordinator and the worker decide ownership with this one
//! function, so a parameter is scored, sliced and saved by exactly one stage.

use std::ops::Range;

/// The token embedding's parameter, which a tied model also uses as its output head.
pub const EMBEDDING: &str = "model.embed_tokens.weight";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLayout {
    /// The pipeline stage.
    pub rank: usize,
    /// Pipeline stages.
    pub world: usize,
    pub layers: Range<usize>,
    /// The token embedding (the first stage).
    pub embeddings: bool,
    /// The final norm and head (the last stage).
    pub head: bool,
    /// Which copy of this stage it is, of how many (data parallelism over the samples).
    pub replica: usize,
    pub replicas: usize,
}

impl ShardLayout {
    /// The whole model as one stage of one replica: a single process.
    pub fn whole(n_layers: usize) -> Self {
        Self { rank: 0, world: 1, layers: 0..n_layers, embeddings: true, head: true, replica: 0, replicas: 1 }
    }

    /// Whether a parameter is this stage's to score, slice and save (a tied embedding lives
    /// on the first stage, although the last one also uses it as its head).
    pub fn owns(&self, param: &str) -> bool {
        match layer_of_param(param) {
            Some(i) => self.layers.contains(&i),
            None if param == EMBEDDING => self.embeddings,
            None => self.head,
        }
    }

    /// Whether the stage holds a parameter's weights: the ones it owns, and a tied embedding
    /// on the last stage, where it is the head.
    pub fn holds(&self, param: &str, tied_embeddings: bool) -> bool {
        self.owns(param) || (tied_embeddings && self.head && param == EMBEDDING)
    }

    /// Whether the stage owns no parameter at all (every one of its layers was removed).
    pub fn owns_nothing(&self) -> bool {
        self.layers.is_empty() && !self.embeddings && !self.head
    }
}

/// The decoder layer a parameter belongs to (`model.layers.{i}.…`).
pub fn layer_of_param(param: &str) -> Option<usize> {
    param.strip_prefix("model.layers.")?.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_parameter_has_one_owner() {
        let first = ShardLayout { rank: 0, world: 2, layers: 0..2, embeddings: true, head: false, replica: 0, replicas: 1 };
        let last = ShardLayout { rank: 1, world: 2, layers: 2..3, embeddings: false, head: true, replica: 0, replicas: 1 };
        for (param, owner_is_first) in [
            ("model.embed_tokens.weight", true),
            ("model.layers.1.mlp.up_proj.weight", true),
            ("model.layers.2.self_attn.q_proj.weight", false),
            ("model.norm.weight", false),
            ("lm_head.weight", false),
        ] {
            assert_eq!((first.owns(param), last.owns(param)), (owner_is_first, !owner_is_first), "{param}");
        }
        assert!(ShardLayout { layers: 2..2, embeddings: false, head: false, ..first.clone() }.owns_nothing());
        assert!(ShardLayout::whole(3).owns("model.layers.2.mlp.down_proj.weight"));
    }
}
