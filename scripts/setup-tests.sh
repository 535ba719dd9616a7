#!/usr/bin/env bash
# What the tests need on top of the build (scripts/setup.sh): Python packages and a headless browser. Idempotent:
# installs only what is missing. Sourced by scripts/test.sh and .ci/run; `baton up` does not need any of it.
#
#   grpcio, grpcio-tools (pip)          the Python worker example and its test (examples/python/, tests/python_worker.rs)
#   conductor-python==2.0.0 (pip)       Netflix Conductor's official SDK, unchanged (tests/conductor_sdk.rs)
#   chromium, chromium-driver (apt),
#   selenium (pip)                      the web UI's browser test (tests/web_ui.rs, tests/browser/ui_check.py)
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

# pip_install_missing CHECK PACKAGE...: installs the packages unless the Python code CHECK runs.
pip_install_missing() {
  local check="$1"
  shift
  command -v python3 >/dev/null 2>&1 || { echo "setup: python3 is missing; the Python tests will fail" >&2; return 0; }
  python3 -c "$check" >/dev/null 2>&1 && return 0
  echo "setup: installing $* (pip)" >&2
  python3 -m pip install --quiet --disable-pip-version-check "$@" >/dev/null 2>&1 ||
    echo "setup: pip install $* failed; the tests that need it will fail" >&2
}

pip_install_missing "import grpc, grpc_tools" grpcio grpcio-tools
pip_install_missing "import conductor.client, importlib.metadata as m; assert m.version('conductor-python') == '2.0.0'" \
  conductor-python==2.0.0
pip_install_missing "import selenium" selenium
apt_install_missing "for the web UI's browser test" chromium chromium-driver ||
  echo "setup: apt-get install chromium chromium-driver failed; the browser test will fail" >&2
