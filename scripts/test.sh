#!/usr/bin/env bash
# The test command: builds optimised (the numeric tests run whole models), fetches the
# reference model into the cache if it is missing, runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --locked
./target/release/llmprune fetch smollm2
cargo test --release --workspace --locked --no-fail-fast
