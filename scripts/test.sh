#!/usr/bin/env bash
# Run the test suite: sets up .venv (once), then lint and pytest. Extra arguments go to pytest.
ASR_EXTRAS="dev,demo,onnx,serve,sherpa,english" source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
# The page test (tests/test_serve_page.py) drives Debian's Chromium through chromium-driver (same
# source package, so their versions match); install both when missing, as CI does on a new machine.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] installing Debian's chromium and chromium-driver for the page test"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "[setup] no chromium/chromedriver and not root: the page test will skip (fail under CI)"
    fi
fi
ruff check .
ruff format --check .
python -m pytest "$@"
