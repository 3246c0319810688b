//! Types shared by the coordinator and the workers. Nothing here touches tensors: a
//! coordinator that only plans must not pay for a tensor library.

pub mod depgraph;
pub mod device;
pub mod dtype;
pub mod family;
pub mod jobs;
pub mod layout;
pub mod model_spec;
pub mod plan;
pub mod planner;
pub mod proto;
pub mod py_random;
pub mod results;
pub mod safetensors_index;
pub mod selection;
pub mod tls;

pub use model_spec::{Architecture, LayerShape, ModelSpec, RopeScaling, SpecError};
pub use py_random::PyRandom;
