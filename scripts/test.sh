#!/usr/bin/env bash
# Run the test suite: sets up .venv (once), then lint and pytest. Extra arguments go to pytest.
ASR_EXTRAS="dev,demo,onnx" source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ruff check .
ruff format --check .
python -m pytest "$@"
