#!/usr/bin/env bash
# Runs the whole test suite; installs headless Chromium for the browser test when it can.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo ">> installing Debian chromium for the browser test (~30 s)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo ">> could not install chromium: the browser test will be skipped (see its skip reason)"
  else
    echo ">> chromium not found and not root: the browser test will be skipped; install it with"
    echo "   sudo apt-get install chromium chromium-driver"
  fi
fi

# CI also installs the optional extras (object storage, Ray: ~2 min, ~560 MB) so their tests run
# (tests/cloud); elsewhere they run when `make cloud` installed them, and are skipped otherwise.
if [ "${CI:-}" = "true" ] && [ -f requirements-cloud.txt ]; then
  echo ">> installing the cloud extras for tests/cloud (requirements-cloud.txt)"
  "$PY" -m pip install --disable-pip-version-check -q -r requirements-cloud.txt \
    || echo ">> could not install the cloud extras: tests/cloud will be skipped (see their skip reasons)"
fi

# The layer contract (pyproject.toml [tool.importlinter]) is checked before any test runs.
# (lint-imports is import-linter's console script; calling its entry point keeps it on the same $PY.)
"$PY" -c "import sys; from importlinter.cli import lint_imports_command; sys.argv[0] = 'lint-imports'; sys.exit(lint_imports_command())" --no-cache \
  || { echo "the layer contract is broken or lint-imports is missing (see above): fix the imports, or install it with $PY -m pip install -r requirements.txt" >&2; exit 1; }

"$PY" -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests: treating this as a failure" >&2
  exit 1
fi
exit $rc
