#!/usr/bin/env bash
# The main job on the shipped defaults: fetch the two default models, build mores, and run the
# cultural-transfer quickstart (recipes/transfer/quickstart.toml): probe the SmolLM2-135M student in
# the 19 fully covered countries, have the Gemma-3-270M teacher paraphrase training questions whose
# targets are each country's human answers, LoRA-train the student, probe it again and report the
# change on held-out questions at the question level and the country level. Rerun after an
# interruption: finished stages are skipped and generation/training resume from their checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${MORES_OUT:-runs/quickstart}"
threads="${MORES_THREADS:-$(nproc)}"
bash scripts/fetch-models.sh
cargo build --release --locked
target/release/mores --threads "$threads" run --recipe recipes/transfer/quickstart.toml --out "$out"
echo "report: $out/report.md (numbers: $out/transfer.json, plot: $out/transfer.svg)"
