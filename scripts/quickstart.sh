#!/usr/bin/env bash
# Installs incad (first run only) and runs the quickstart scenario on the embedded synthetic data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
exec .venv/bin/incad run experiments/quickstart.yaml "$@"
