#!/usr/bin/env bash
# Install llama.cpp's OpenAI-compatible HTTP server (llama-cpp-python 0.3.36, `python -m llama_cpp.server`)
# into a Python virtual environment, for the tests of mores' OpenAI-compatible API backend.
#
# The venv is ${MORES_LLAMA_VENV:-<repo>/.venv-llama}. llama-cpp-python has no binary wheel: pip builds
# llama.cpp from the sdist with CMake, here for AVX2 without native flags (machines of this kind differ:
# some have AVX-512, some do not, and an AVX-512 build dies with SIGILL where it is missing). The build
# tools (scikit-build-core, cmake, ninja) and the server's dependencies are installed first at pinned
# versions, then llama-cpp-python is built against them with --no-build-isolation, so a later run gets
# the same packages. Takes ~10 minutes on 2 cores; idempotent: skips all work when the venv already
# imports llama_cpp.server at the pinned version. The last line of stdout is the venv's python.
# Start the server with, e.g.:
#   "$py" -m llama_cpp.server --model checkpoints/SmolLM2-135M-Instruct.Q4_1.gguf --host 127.0.0.1 \
#     --port PORT --logits_all true --n_threads 1 --model_alias smol
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${MORES_LLAMA_VENV:-$root/.venv-llama}"
base_py="${PYTHON:-python3}"
py="$venv/bin/python"

llama_version="0.3.36"

# Build tools for the sdist (llama-cpp-python's build-system: scikit-build-core, which wants cmake>=3.21 and ninja).
build_pins=(
  scikit-build-core==1.1.2
  cmake==4.4.5
  ninja==1.13.2
  packaging==26.4
  pathspec==1.1.1
)
# llama-cpp-python's own dependencies and its [server] extra (less PyYAML, needed only for --config_file *.yaml),
# with everything they pull in, as pip resolved them for Python 3.11 on linux x86_64.
run_pins=(
  typing_extensions==4.16.0
  numpy==2.4.6
  diskcache==5.6.3
  Jinja2==3.1.6
  MarkupSafe==3.0.4
  uvicorn==0.55.0
  click==8.5.1
  h11==0.16.0
  fastapi==0.165.0
  annotated-doc==0.0.7
  starlette==1.10.0
  anyio==4.16.0
  idna==3.21
  pydantic==2.14.4
  pydantic_core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  pydantic-settings==2.16.3
  python-dotenv==1.2.4
  sse-starlette==3.7.1
  starlette-context==0.3.6
  opentelemetry-api==1.45.3
)

installed() {
  [ -x "$py" ] && "$py" - "$llama_version" >/dev/null 2>&1 <<'PY'
import sys
import llama_cpp, llama_cpp.server.app, uvicorn  # noqa: F401  (loads libllama too)
sys.exit(0 if llama_cpp.__version__ == sys.argv[1] else 1)
PY
}

if installed; then
  echo "llama-cpp-python $llama_version already installed in $venv" >&2
  echo "$py"
  exit 0
fi

# A venv whose python no longer runs (its base interpreter moved) is made anew.
if [ ! -x "$py" ] || ! "$py" -c 'import sys' >/dev/null 2>&1; then
  echo "creating venv $venv" >&2
  "$base_py" -m venv --clear "$venv" >&2
fi

pip=("$py" -m pip --disable-pip-version-check)
echo "installing build tools and server dependencies (pinned)" >&2
"${pip[@]}" install --no-deps "${build_pins[@]}" "${run_pins[@]}" >&2

echo "building llama-cpp-python $llama_version (llama.cpp, AVX2, no native flags; several minutes)" >&2
# The venv's bin first on PATH: scikit-build-core finds the pinned cmake and ninja there.
# --no-cache-dir: never reuse a wheel that pip cached from a build with other CMAKE_ARGS.
PATH="$venv/bin:$PATH" \
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF" \
  "${pip[@]}" install --no-deps --no-build-isolation --no-binary llama-cpp-python --no-cache-dir \
  "llama-cpp-python==$llama_version" >&2

if ! installed; then
  echo "error: $venv does not import llama_cpp.server at version $llama_version after the install" >&2
  exit 1
fi
echo "$py"
