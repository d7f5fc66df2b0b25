#!/usr/bin/env bash
# Build mores with the `cuda` feature on a machine without a GPU: the CUDA compiler, headers and
# runtime library come as PyPI wheels (NVIDIA's own), assembled into a toolkit folder that
# candle's kernel build and cudarc read through CUDA_HOME. No driver is needed to compile: cudarc
# loads it when a CUDA device is opened.
#
#   scripts/check-cuda-build.sh            # compute capability 8.0 (A100; runs on H100/H200 too)
#   CUDA_COMPUTE_CAP=90 scripts/check-cuda-build.sh
#
# Writes the toolkit to .venv-cuda/ (about 0.5 GB) and the build to target/cuda/; prints the binary's path.
# On a machine with a CUDA toolkit installed, `cargo build --release --features cuda` is enough.
set -euo pipefail
cd "$(dirname "$0")/.."

CAP="${CUDA_COMPUTE_CAP:-80}"
# CUDA 13.0: the first series whose compiler comes as a wheel (the -cu12 wheels hold ptxas only),
# and the oldest driver (580) among the 13.x toolkits that cudarc knows.
CUDA_SERIES="${CUDA_SERIES:-13.0}"
VENV=.venv-cuda
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "nvidia-cuda-nvcc==${CUDA_SERIES}.*" "nvidia-cuda-crt==${CUDA_SERIES}.*" "nvidia-nvvm==${CUDA_SERIES}.*" \
    "nvidia-cuda-runtime==${CUDA_SERIES}.*" "nvidia-cuda-cccl==${CUDA_SERIES}.*"

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The wheels unpack into one toolkit tree (bin, include, include/cccl, lib, nvvm).
HOME_DIR="$SITE/nvidia/cu13"
[ -x "$HOME_DIR/bin/nvcc" ] || { echo "check-cuda-build: no nvcc in $HOME_DIR/bin after installing the wheels" >&2; exit 1; }
# The runtime wheel ships libcudart.so.13 only; the linker asks for libcudart.so (in lib64).
ln -sfn "$(basename "$(ls "$HOME_DIR"/lib/libcudart.so.* | head -1)")" "$HOME_DIR/lib/libcudart.so"
ln -sfn lib "$HOME_DIR/lib64"

export CUDA_HOME="$HOME_DIR" CUDA_PATH="$HOME_DIR" CUDA_COMPUTE_CAP="$CAP"
export PATH="$HOME_DIR/bin:$PATH"
export LIBRARY_PATH="$HOME_DIR/lib64${LIBRARY_PATH:+:$LIBRARY_PATH}"
"$HOME_DIR/bin/nvcc" --version | tail -2

start=$(date +%s)
cargo build --release --locked --features cuda --target-dir target/cuda --bin mores
echo "check-cuda-build: built target/cuda/release/mores with --features cuda for compute capability $CAP in $(( $(date +%s) - start )) s"
# The binary starts without a driver; asking it for a CUDA device then fails with a message.
LD_LIBRARY_PATH="$HOME_DIR/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" target/cuda/release/mores --version
