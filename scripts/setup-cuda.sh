#!/usr/bin/env bash
# The toolchain for `--features cuda` on any Linux x86-64 machine, GPU or not: CUDA 13.0's nvcc,
# headers and libraries and NCCL from PyPI wheels into one folder (no system CUDA, no root).
#
#   eval "$(bash scripts/setup-cuda.sh)"         # from the repository root; then
#   cargo build --release --features cuda
#
# It prints the environment cargo needs on stdout (progress goes to stderr) and writes it to
# $LLMPRUNE_CUDA_DIR/env.sh too. A second run reuses the folder.
#
# Settings (environment):
#   LLMPRUNE_CUDA_DIR  where the toolchain goes (default ~/.cache/llmprune/cuda-13.0)
#   CUDA_COMPUTE_CAP   the GPUs' compute capability (default 90: H100/H200); without a GPU
#                      nothing can detect it, and candle's kernels are built for it alone
#   CUDAFORGE_THREADS  parallel nvcc jobs in candle-kernels' build (default: the cores)
#
# Why 13.0 and not the newest 13.x: candle loads its kernels as PTX, and PTX from a newer nvcc
# does not load on an older driver; the GPU machines we check on run driver 580 (CUDA 13.0).
# Run time: a `cuda` binary needs libcuda.so.1 (the NVIDIA driver) and the CUDA 13 libraries
# (this folder's lib/, or those of an installed PyTorch cu130) on LD_LIBRARY_PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${LLMPRUNE_CUDA_DIR:-$HOME/.cache/llmprune/cuda-13.0}
CUDA_TK=13.0.2   # nvcc/crt/nvrtc 13.0.88, cudart 13.0.96, cccl 13.0.85, cuBLAS 13.1.0.3, cuRAND 10.4.0.35
NCCL_VER=2.28.9  # nvidia-nccl-cu13
CAP=${CUDA_COMPUTE_CAP:-90}
THREADS=${CUDAFORGE_THREADS:-$(nproc)}
say() { echo "setup-cuda: $*" >&2; }

# 1. The wheels, into a venv of their own (pip's metadata makes a rerun a no-op).
STAMP="$DIR/.installed-$CUDA_TK-$NCCL_VER"
if [ ! -f "$STAMP" ]; then
  say "installing cuda-toolkit $CUDA_TK and nvidia-nccl-cu13 $NCCL_VER into $DIR (1.4 GB, a few minutes)"
  python3 -m venv "$DIR/venv"
  "$DIR/venv/bin/pip" install -q --disable-pip-version-check \
    "cuda-toolkit[nvcc,nvvm,crt,cccl,cudart,cublas,curand,nvrtc]==$CUDA_TK" "nvidia-nccl-cu13==$NCCL_VER" >&2
fi
NV=$("$DIR/venv/bin/python" -c 'import nvidia; print(list(nvidia.__path__)[0])')
CU=$NV/cu13
[ -x "$CU/bin/nvcc" ] || { say "no nvcc in $CU/bin after installing cuda-toolkit $CUDA_TK"; exit 1; }

# 2. What the linker wants and the wheels lack: unversioned library names, and a link-time
# libcuda.so (the driver's library; no wheel ships it). The stub exports every driver entry
# point cudarc may reference, each returning CUDA_ERROR_STUB_LIBRARY (34); it sits in
# lib/stubs, is never shipped, and a machine with a driver loads the real libcuda.so.1.
for l in cublas cublasLt cudart nvrtc; do ln -sfn "lib$l.so.13" "$CU/lib/lib$l.so"; done
ln -sfn libcurand.so.10 "$CU/lib/libcurand.so"
ln -sfn ../../nccl/lib/libnccl.so.2 "$CU/lib/libnccl.so"
if [ ! -f "$CU/lib/stubs/libcuda.so" ]; then
  CUDARC=$(cargo metadata --format-version 1 --locked --all-features | "$DIR/venv/bin/python" -c \
    'import json,sys,os; m=json.load(sys.stdin); print(os.path.dirname([p["manifest_path"] for p in m["packages"] if p["name"]=="cudarc"][0]))')
  mkdir -p "$CU/lib/stubs"
  grep -ohE 'load::<_F>\("cu[A-Za-z0-9_]+"\)' "$CUDARC/src/driver/sys/mod.rs" | sed -E 's/.*\("(.*)"\)/\1/' | sort -u |
    grep -vxE 'cuGetError(String|Name)' |
    awk 'BEGIN { print "/* link-time stub for libcuda.so.1, made by scripts/setup-cuda.sh */";
                 print "int cuGetErrorString(int e, const char **s) { *s = \"CUDA_ERROR_STUB_LIBRARY: no NVIDIA driver on this machine\"; return 0; }";
                 print "int cuGetErrorName(int e, const char **s) { *s = \"CUDA_ERROR_STUB_LIBRARY\"; return 0; }" }
         { print "int " $1 "(void) { return 34; }" }' > "$DIR/libcuda-stub.c"
  gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$CU/lib/stubs/libcuda.so" "$DIR/libcuda-stub.c"
  ln -sfn libcuda.so "$CU/lib/stubs/libcuda.so.1"
  say "link-time stub libcuda.so: $(grep -c 'return 34' "$DIR/libcuda-stub.c") driver entry points"
fi
touch "$STAMP"

# 3. The environment. CUDARC_CUDA_VERSION stays unset: the workspace names cudarc's
# `cuda-13000`, and two versions at once do not compile.
cat > "$DIR/env.sh" <<EOF
export CUDA_HOME=$CU CUDA_PATH=$CU CUDA_ROOT=$CU
export PATH=$CU/bin:\$PATH
export CUDA_COMPUTE_CAP=$CAP
export CUDAFORGE_THREADS=$THREADS
export LLMPRUNE_CUDA_LIBS=$CU/lib:$NV/nccl/lib
EOF
say "$("$CU/bin/nvcc" --version | tail -1); compute capability $CAP; environment in $DIR/env.sh"
cat "$DIR/env.sh"
