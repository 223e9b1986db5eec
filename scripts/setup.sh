#!/usr/bin/env bash
# Set up mmpref in ./.venv: torch and torchvision first, pinned, then the package (editable) with optional extras.
# Usage: bash scripts/setup.sh [EXTRAS]      e.g. bash scripts/setup.sh dev   or   bash scripts/setup.sh dev,vision
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python=${PYTHON:-python3}
"$python" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"mmpref needs Python >= 3.11, this is {sys.version.split()[0]}; set PYTHON=/path/to/python3.11")
PY
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# Pinned first: this pairing imports cleanly (other pairings break `import torchvision`, and lightning with it).
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install --quiet -e ".[${extras}]"
else
  .venv/bin/python -m pip install --quiet -e .
fi
# The browser test of the labelling app drives Debian's Chromium (never a downloaded browser): install it with the
# dev extra when this machine can (root + apt-get); elsewhere that one test is skipped and says why.
if [[ ",$extras," == *",dev,"* ]] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium not installed (needs root + apt-get); the browser test will be skipped" >&2
  fi
fi
.venv/bin/python -c "import torch, mmpref; print(f'mmpref {mmpref.__version__} ready (torch {torch.__version__})')"
