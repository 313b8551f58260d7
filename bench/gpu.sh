#!/usr/bin/env bash
# The GPU checks in one go (about 8 minutes on one H100/H200-class GPU): adapter training at paper
# size in fp32 and bf16 (steps/s, peak memory), feature extraction at paper size (DINOv2-B/14 at
# 840 px, SD-1.5 at 960 px; images/s), pseudo-labelling (chains/s, against the reference algorithm)
# and evaluation (pairs/s); then the smoke preset end to end (`dvc exp run -S preset=smoke` in a
# temporary clone of HEAD: the paper's code path at its shapes, about 5-10 more minutes). All with
# seeded random weights of the real architectures, so nothing is downloaded. Writes one Markdown
# report: a table of the checks, then each benchmark's own figures.
#
#   bash bench/gpu.sh [REPORT.md] [CHECK ...]   (default: gpu-report.md, every check; CHECK is one of
#                                                 train-fp32 train-bf16 features pseudo-labels
#                                                 evaluate smoke; DIYSC_DEVICE picks the GPU)
set -uo pipefail
cd "$(dirname "$0")/.."

report=${1:-gpu-report.md}
shift || true
wanted=" $* "
device=${DIYSC_DEVICE:-cuda}
export DIYSC_DEVICE=$device DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The smoke run, in a copy of the repository (a clone of HEAD; a snapshot of the tree where this is
# not a git checkout), as its own DVC experiment with the copy's diysc.
smoke_run() {
  local copy=$1
  if git rev-parse --git-dir > /dev/null 2>&1; then
    git clone -q . "$copy" || return
  else
    mkdir -p "$copy" && tar -C . --exclude=./.venv --exclude=./data --exclude=./models -cf - . \
      | tar -C "$copy" -xf - || return
    (cd "$copy" && git init -q && git add -A \
      && git -c user.name=bench -c user.email=bench@localhost commit -qm snapshot) || return
  fi
  cd "$copy" && PYTHONPATH="$copy" dvc exp run -S preset=smoke && cat metrics/headline.json
}
export -f smoke_run
smoke="smoke_run $work/smoke"

# name | time limit (s) | command
all_checks=(
  "train-fp32|90|python bench/train.py --device $device --cases paper,paper-dino --steps 20"
  "train-bf16|90|python bench/train.py --device $device --cases paper,paper-dino --steps 20 --bf16"
  "features|150|python bench/features.py --device $device --cases vitb14,sd15 --images 8"
  "pseudo-labels|90|python bench/pseudo_labels.py --device $device --grid 60 --channels 3968"
  "evaluate|60|python bench/evaluate.py --device $device"
  "smoke|600|$smoke"
)
checks=()
for check in "${all_checks[@]}"; do
  name=${check%%|*}
  if [[ "$wanted" == "  " || "$wanted" == *" $name "* ]]; then checks+=("$check"); fi
done
if (( ${#checks[@]} == 0 )); then echo "no such check: $*" >&2; exit 2; fi

python - <<'EOF' || { echo "no CUDA device visible to torch" >&2; exit 1; }
import torch
assert torch.cuda.is_available()
EOF

{
  echo "# GPU checks"
  echo
  python - <<'EOF'
import platform, torch
name = torch.cuda.get_device_name(0)
memory = torch.cuda.get_device_properties(0).total_memory / 2**30
print(f"{name} ({memory:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"Python {platform.python_version()}")
EOF
  echo
  echo "| check | command | status | wall s |"
  echo "|---|---|---|---|"
} > "$report"

i=0
for check in "${checks[@]}"; do
  IFS='|' read -r name limit command <<< "$check"
  start=$(date +%s)
  timeout "$limit" bash -c "$command" > "$work/$i.log" 2>&1
  code=$?
  seconds=$(( $(date +%s) - start ))
  case $code in
    0) status=ok ;;
    124) status="timed out ($limit s)" ;;
    *) status="failed ($code)" ;;
  esac
  echo "| $name | \`$command\` | $status | $seconds |" >> "$report"
  echo "$name: $status in $seconds s" >&2
  i=$((i + 1))
done

i=0
for check in "${checks[@]}"; do
  IFS='|' read -r name _ _ <<< "$check"
  { echo; echo "## $name"; echo; echo '```'; tail -n 40 "$work/$i.log"; echo '```'; } >> "$report"
  i=$((i + 1))
done
echo "report: $report" >&2
