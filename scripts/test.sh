#!/usr/bin/env bash
# The test command: builds optimised (the numeric tests run whole models), fetches the
# reference model into the cache if it is missing, runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --locked
# The GPU collectives (NCCL through cudarc, libraries loaded at run time) must keep compiling.
cargo check -p llmprune-worker --features nccl --locked
./target/release/llmprune fetch smollm2
cargo test --release --workspace --locked --no-fail-fast
# The deployment example: a coordinator and two workers as separate processes on loopback.
OUT=$(mktemp -d)/deploy-local PORT=${DEPLOY_PORT:-17070} bash deploy/local/run.sh
