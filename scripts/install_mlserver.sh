#!/usr/bin/env bash
# Installs Seldon MLServer (a third-party Open Inference Protocol server) into a virtual
# environment for the suite's OIP test (tests/suite/deployment.rs) and prints its python.
# Idempotent: an existing environment is reused. ~60 s and ~330 MB from PyPI the first time.
#   bash scripts/install_mlserver.sh [VENV]     (default: target/venv-mlserver)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-target/venv-mlserver}
if [ ! -x "$venv/bin/mlserver" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "mlserver==1.7.1" >&2
fi
"$venv/bin/python" -c 'import mlserver' >&2
echo "$venv/bin/python"
