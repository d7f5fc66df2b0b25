#!/usr/bin/env bash
# pandas and pyarrow in .venv-tables/: the export tests read every table `mores export` writes
# back with them (CSV with pandas, Parquet with pyarrow). Prints the environment's python as the
# last line. MORES_TABLES_VENV sets another folder; PYTHON another base interpreter.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${MORES_TABLES_VENV:-$root/.venv-tables}"
py="$venv/bin/python"
pins=(
  pandas==3.0.6
  pyarrow==25.0.1
  numpy==2.4.6
  python-dateutil==2.9.0.post0
  six==1.17.0
  tzdata==2025.3
)
if [ -x "$py" ] && "$py" -c "import pandas, pyarrow, sys; sys.exit(0 if (pandas.__version__, pyarrow.__version__) == ('3.0.6', '25.0.1') else 1)" 2>/dev/null; then
  echo "pandas and pyarrow already installed in $venv" >&2
else
  "${PYTHON:-python3}" -m venv "$venv" >&2
  "$py" -m pip install --quiet --no-deps "${pins[@]}" >&2
  "$py" -c "import pandas, pyarrow" >&2
fi
echo "$py"
