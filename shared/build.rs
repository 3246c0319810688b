//! Compiles `proto/pruner/v1/*.proto` into `llmprune_shared::proto` (pure Rust: no protoc).

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not when it was compiled: a target directory shared by
    // checkouts at other paths (the CUDA build's cache) reuses compiled build scripts.
    let root = Path::new(&std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let files = ["pruner/v1/common.proto", "pruner/v1/coordinator.proto", "pruner/v1/worker.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let descriptors = protox::compile(files, [&root])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
