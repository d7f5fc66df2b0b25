#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (CUDA 13 driver, 580 or later): build mores with
# `--features cuda` and measure the GPU against the CPU, in about ten minutes.
#
#   scripts/gpu-check.sh [OUT]        # OUT defaults to gpu-check/; MORES_GPU=cuda:1 picks a GPU
#
# (a)-(c): the device-generic tests (tests/it/generic.rs) with the GPU as the generic device:
#     option probabilities GPU vs CPU kernels in f32 and bf16, ten LoRA steps' losses, greedy
#     generation; every figure is printed to OUT/equality.log.
# (d) speeds on the GPU: the default probe's first eighth, `bench lora`, `bench generate`.
# Needs the default models (scripts/fetch-models.sh) for the SmolLM2 and Gemma parts, and
# either a CUDA toolkit (nvcc on PATH) or PyPI for the compiler wheels (and, where the machine
# has no CUDA 13 cuBLAS, for its wheel). Times mores only: the Python peers' scripts run on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu-check}"
DEV="${MORES_GPU:-cuda:0}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1

nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv | tee "$OUT/gpu.csv"
CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')
export CUDA_COMPUTE_CAP="$CAP"

# Build: the local toolkit if there is one, else the wheels (scripts/check-cuda-build.sh).
if command -v nvcc >/dev/null; then
    cargo build --release --locked --features cuda --target-dir target/cuda --bin mores
    TEST_ENV=()
else
    bash scripts/check-cuda-build.sh
    SITE=$(.venv-cuda/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    TOOLKIT="$SITE/nvidia/cu13"
    # The real cuBLAS and cuRAND where the machine has none.
    if ! ldconfig -p | grep -q 'libcublas.so.13'; then
        .venv-cuda/bin/python -m pip install --quiet --disable-pip-version-check "nvidia-cublas==13.0.*" "nvidia-curand"
    fi
    export LD_LIBRARY_PATH="$TOOLKIT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # The test binary links as the binary did (the stand-ins, for link time only); it runs on the
    # driver's and the wheels' real libraries (LD_LIBRARY_PATH).
    TEST_ENV=(CUDA_HOME="$TOOLKIT" CUDA_PATH="$TOOLKIT" PATH="$TOOLKIT/bin:$PATH" LIBRARY_PATH="$PWD/target/cuda/stubs:$TOOLKIT/lib")
fi
BIN=target/cuda/release/mores
"$BIN" --device "$DEV" score --model tests/data/arch/qwen2 --prompt "x" --labels a,b >/dev/null

# (a)-(c) equality on the GPU: the same tests as CI's cpu-generic, with the GPU as the device.
env "${TEST_ENV[@]}" MORES_GENERIC_DEVICE="$DEV" \
    cargo test --release --locked --features cuda --target-dir target/cuda --test it generic:: -- --nocapture --test-threads 1 \
    2>&1 | tee "$OUT/equality.log" || true

# (d) speeds.
if [ -f checkpoints/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
    start=$(date +%s.%N)
    "$BIN" --device "$DEV" --quiet probe --shard 0/8 --out "$OUT/probe-eighth"
    echo "probe, first eighth, $DEV: $(echo "$(date +%s.%N) - $start" | bc) s" | tee -a "$OUT/speeds.txt"
    "$BIN" --device "$DEV" bench lora 2>&1 | tee -a "$OUT/speeds.txt"
    "$BIN" --device "$DEV" bench generate --weights f32 2>&1 | tee -a "$OUT/speeds.txt"
fi
echo "gpu-check: done; figures in $OUT/"
