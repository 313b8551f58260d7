#!/usr/bin/env bash
# Install diysc with its locked dependencies into the active Python environment:
#   ./install.sh                          requirements.lock (PyTorch's CPU build), the default
#   ./install.sh requirements-cuda.lock   PyTorch's CUDA build from PyPI, for a GPU machine
#
# The CPU build (torch==2.13.0+cpu) is served by PyTorch's own index. pip asks every index it is
# given about every package, and retries an unreachable one five times per package: naming that
# index in the lock cost 25 minutes on a machine without a route to it. So the index is probed
# once here and added only when it answers; otherwise the wheel must come from pip's own
# configuration (a local mirror or --find-links, as on clusters and air-gapped nodes).
set -euo pipefail
cd "$(dirname "$0")"
lock="${1:-requirements.lock}"
index="${DIYSC_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
python="${PYTHON:-python}"
extra=()
if grep -q '^torch==.*+cpu' "$lock"; then
  if "$python" - "$index/torch/" <<'PROBE'
import sys
import urllib.request

try:
    urllib.request.urlopen(sys.argv[1], timeout=10).close()
except Exception:
    sys.exit(1)
PROBE
  then
    extra=(--extra-index-url "$index")
    echo "install.sh: PyTorch's CPU index answers ($index): taking torch from it"
  else
    echo "install.sh: PyTorch's CPU index does not answer ($index): torch must come from pip's configured index or find-links"
  fi
fi
if [ "${DIYSC_INSTALL_DRY_RUN:-0}" = 1 ]; then
  echo "$python -m pip install ${extra[*]} -r $lock -e .[dev]"
  exit 0
fi
if ! "$python" -m pip install "${extra[@]}" -r "$lock" -e ".[dev]"; then
  torch_pin=$(grep '^torch==' "$lock")
  echo "install.sh: pip failed. If it could not find $torch_pin: give pip a mirror that has it" \
    "(PIP_EXTRA_INDEX_URL or PIP_FIND_LINKS), or install PyTorch's CUDA build from PyPI with" \
    "./install.sh requirements-cuda.lock" >&2
  exit 1
fi
