#!/usr/bin/env bash
# Fuzz every reader of mores for MINUTES in all (default 10), with a fresh seed: GGUF, safetensors
# model folders, PEFT adapters, dataset lines, recipes, survey files and the respondent-level CSV.
# Each reader runs in turn for its share of the time. A failing input is kept under
# target/fuzz-crashes/ and the run stops: turn it into a regression test in tests/it/hostile.rs.
# Rerun a seed with MORES_FUZZ_SEED=N.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-10}"
seed="${MORES_FUZZ_SEED:-$(date +%s)}"
readers=(gguf_headers safetensors_model adapter_folders dataset_lines recipe_toml survey_files respondent_csv)
per=$(( minutes * 60 / ${#readers[@]} ))
[ "$per" -ge 1 ] || per=1
echo "fuzz: seed $seed, ${per}s per reader" >&2
cargo build --release --locked --tests >/dev/null
for r in "${readers[@]}"; do
  MORES_FUZZ_SEED="$seed" MORES_FUZZ_SECONDS="$per" MORES_FUZZ_CASES=1000000000 \
    cargo test --release --locked --test it "fuzz::fuzz_${r}" -- --nocapture 2>&1 | grep -E "^fuzz |panicked|FAILED|ran over" || true
  if ls target/fuzz-crashes/ 2>/dev/null | grep -q "\-$seed-"; then
    echo "fuzz: a failing input is kept under target/fuzz-crashes/ (seed $seed)" >&2
    exit 1
  fi
done
echo "fuzz: no failure in $minutes min (seed $seed)" >&2
