# Sourced by the set-up scripts: create or reuse .venv at the repository root and install the
# package with the extras named in ASR_EXTRAS, once. A stamp holding a hash of pyproject.toml and
# the extras makes a second run install nothing; editing pyproject.toml triggers a re-install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRAS="${ASR_EXTRAS:-dev}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: Python 3.10 or newer is needed (found: $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment at $VENV"
    "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.asr-installed-$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-${EXTRAS//,/-}"
if [ ! -f "$STAMP" ]; then
    echo "[setup] installing asr[$EXTRAS] into $VENV (first run: about 3 GB, a few minutes)"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e "$ROOT[$EXTRAS]"
    rm -f "$VENV"/.asr-installed-*
    touch "$STAMP"
else
    echo "[setup] $VENV is up to date"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
