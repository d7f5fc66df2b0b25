#!/usr/bin/env bash
# The test suite: fetch the default models (end-to-end tests use them), then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-models.sh
cargo test --locked --all-targets "$@"
