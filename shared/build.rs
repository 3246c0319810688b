//! Compiles `proto/pruner/v1/*.proto` into `llmprune_shared::proto` (pure Rust: no protoc).

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let files = ["pruner/v1/common.proto", "pruner/v1/coordinator.proto", "pruner/v1/worker.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let descriptors = protox::compile(files, [&root])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
