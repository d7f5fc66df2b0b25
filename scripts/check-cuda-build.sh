#!/usr/bin/env bash
# Build mores with the `cuda` feature on a machine without a GPU: the CUDA compiler, headers and
# runtime library come as PyPI wheels (NVIDIA's own), assembled into a toolkit folder that
# candle's kernel build and cudarc read through CUDA_HOME. No driver is needed to compile: cudarc
# loads it when a CUDA device is opened.
#
#   scripts/check-cuda-build.sh            # compute capability 8.0 (A100; runs on H100/H200 too)
#   CUDA_COMPUTE_CAP=90 scripts/check-cuda-build.sh
#
# Writes the toolkit to .venv-cuda/ (about 0.5 GB) and the build to target/cuda/; prints the libraries
# the binary needs at run time.
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
cargo build --release --locked --features cuda --target-dir target/cuda --lib

# Link-time stand-ins for the libraries a GPU machine supplies: the driver's libcuda.so.1 and
# CUDA's nvrtc, cuBLAS, cuBLASLt and cuRAND (candle links them; the wheels of the last two are
# 0.7 GB). Each stand-in defines the functions the build references under the real library's
# soname, as the stubs/ folder of a CUDA toolkit does; at run time the real libraries load.
STUBS="$PWD/target/cuda/stubs"
rm -rf "$STUBS" && mkdir -p "$STUBS"
undefined=$(for lib in target/cuda/release/deps/lib{cudarc,candle_core,candle_nn,candle_transformers,mores}-*.rlib; do
    nm -u "$lib" 2>/dev/null || true
done | awk '{print $NF}' | sort -u)
stub() { # name soname pattern [exclude]
    local syms
    syms=$(printf '%s\n' "$undefined" | grep -E "$3" | { if [ -n "${4:-}" ]; then grep -vE "$4"; else cat; fi; } || true)
    printf '%s\n' "$syms" | awk 'NF {print "void " $1 "(void) {}"}' > "$STUBS/$1.c"
    cc -shared -fPIC -Wl,-soname,"$2" -o "$STUBS/lib$1.so" "$STUBS/$1.c"
    ln -sfn "lib$1.so" "$STUBS/$2"
    echo "check-cuda-build: stand-in lib$1.so ($2): $(printf '%s\n' "$syms" | grep -c . || true) functions"
}
stub cuda libcuda.so.1 '^cu[A-Z]'
stub nvrtc libnvrtc.so.13 '^nvrtc'
stub curand libcurand.so.10 '^curand'
stub cublas libcublas.so.13 '^cublas' '^cublasLt'
stub cublasLt libcublasLt.so.13 '^cublasLt'
export LIBRARY_PATH="$STUBS:$LIBRARY_PATH"

cargo build --release --locked --features cuda --target-dir target/cuda --bin mores
echo "check-cuda-build: built target/cuda/release/mores with --features cuda for compute capability $CAP in $(( $(date +%s) - start )) s"
# Its dynamic dependencies, which a GPU machine's driver and CUDA 13 libraries supply:
readelf -d target/cuda/release/mores | awk '/NEEDED/ {print "  needs " $NF}'
# With the stand-ins it starts (no CUDA function is called unless a CUDA device is asked for),
# and its kernels and its generic path agree as in the default build's tests.
if [ -f checkpoints/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
    score() {
        LD_LIBRARY_PATH="$STUBS:$HOME_DIR/lib" target/cuda/release/mores --device "$1" score \
            --model checkpoints/SmolLM2-135M-Instruct.Q4_1.gguf --f32 --prompt "Is family important? Answer: " --labels Yes,No
    }
    a=$(score cpu) b=$(score cpu-generic) python3 - <<'PY'
import json, os
a, b = json.loads(os.environ["a"])["probs"], json.loads(os.environ["b"])["probs"]
gap = max(abs(x - y) for x, y in zip(a, b))
assert gap <= 1e-5, f"check-cuda-build: cpu {a} and cpu-generic {b} differ by {gap}"
print(f"check-cuda-build: the CUDA build runs; cpu and cpu-generic probabilities within {gap:.1e}")
PY
fi
