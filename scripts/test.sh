#!/usr/bin/env bash
# Installs incad with its test extra (first run only) and runs the test suite.
# pytest's exit code 5 ("no tests collected") counts as a failure: a suite that runs nothing is broken.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
source scripts/env.sh
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "test: pytest collected no tests; failing on purpose" >&2
  exit 1
fi
exit "$status"
