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

"$PY" -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests: treating this as a failure" >&2
  exit 1
fi
exit $rc
