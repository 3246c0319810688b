//! The llmprune worker library: a LLaMA-family model on candle with per-layer shapes,
//! loaders for Hugging Face directories and GGUF files, and evaluation.

pub mod calibration;
pub mod cluster;
pub mod collective;
pub mod confine;
pub mod cpu_load;
pub mod error;
pub mod eval;
pub mod export;
pub mod file_mode;
pub mod generate;
pub mod loader;
pub mod lora;
pub mod memory;
pub mod model;
pub mod ops;
pub mod prune;
pub mod stage;
pub mod synth;
pub mod train;

pub use error::{Error, Result};
pub use loader::{load_model, LoadedModel};
pub use model::{Exec, LlamaModel, LoadOptions};
