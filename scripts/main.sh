#!/usr/bin/env bash
# The main job on the shipped defaults: fetch the two default models, build mores, probe both over
# every country with >= 50 scored WVS-7 questions, and compare them. Resumable: rerun after an
# interruption and finished prompts come from the scoring cache.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${MORES_OUT:-runs/main}"
threads="${MORES_THREADS:-$(nproc)}"
bash scripts/fetch-models.sh
cargo build --release --locked
bin=target/release/mores
$bin --threads "$threads" probe --recipe recipes/probe/wvs.toml \
  --model checkpoints/SmolLM2-135M-Instruct.Q4_1.gguf --out "$out/smollm2-135m-instruct"
$bin --threads "$threads" probe --recipe recipes/probe/wvs.toml \
  --model checkpoints/gemma-3-270m-q4_k_m.gguf --out "$out/gemma-3-270m"
$bin compare "$out/smollm2-135m-instruct" "$out/gemma-3-270m" | tee "$out/compare.md"
echo "reports: $out/*/report.md, comparison: $out/compare.md"
