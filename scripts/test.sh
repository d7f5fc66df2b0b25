#!/usr/bin/env bash
# The test suite: fetch the default models (end-to-end tests use them), install llama.cpp's
# OpenAI-compatible server (the served-model tests start it on 127.0.0.1) and pandas with pyarrow
# (the export tests read the tables back), then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-models.sh
MORES_LLAMA_PYTHON="$(bash scripts/setup-llama-server.sh | tail -n 1)"
export MORES_LLAMA_PYTHON
MORES_TABLES_PYTHON="$(bash scripts/setup-table-readers.sh | tail -n 1)"
export MORES_TABLES_PYTHON
cargo test --locked --all-targets "$@"
