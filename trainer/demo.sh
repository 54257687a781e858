#!/usr/bin/env bash
# The main job in one command, from a fresh clone: make .venv/, install torch + the trainer, run the demo.
#
#   bash trainer/demo.sh [demo options...]      e.g. bash trainer/demo.sh --steps 500
#
# torch: without a GPU (`nvidia-smi -L` fails or is absent) the CPU build KS_TORCH (default torch==2.13.0,
# the CPU wheel on the package index this project is developed against); where the default index serves
# CUDA builds instead, point KS_TORCH_INDEX at PyTorch's CPU wheel index (an extra index for the torch
# install only), which keeps the ~4.5 GB of CUDA libraries a CPU never uses out. With a GPU, KS_TORCH
# (default: torch). Installed first, so that `pip install -e ".[train]"` finds torch>=2.4 satisfied and
# keeps it. The script itself contacts no other host than pip's configured index.
# Environment: KS_TORCH (the torch requirement), KS_TORCH_INDEX (an extra index for the CPU torch; default none),
# KS_VENV (default: .venv in the repository), PYTHON (default: python3), KS_DRY_RUN=1 (print the
# commands instead of running them).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)  # the demo writes relative to the current folder
venv=${KS_VENV:-$repo/.venv}
python=${PYTHON:-python3}

run() {
  if [ -n "${KS_DRY_RUN:-}" ]; then
    echo "+ $*"
  else
    "$@"
  fi
}

torch_index=""
if nvidia-smi -L >/dev/null 2>&1; then
  device="GPU"
  torch_spec=${KS_TORCH:-torch}
else
  device="CPU"
  torch_spec=${KS_TORCH:-torch==2.13.0}
  torch_index=${KS_TORCH_INDEX:-}
fi

# complete = set up by this script for this torch and this pyproject.toml (the stamp); else (re)install
stamp="$device $torch_spec $torch_index $(cksum < "$repo/pyproject.toml")"
if [ ! -x "$venv/bin/python" ]; then
  run "$python" -m venv "$venv" || { echo "demo.sh: could not create $venv (on Debian/Ubuntu: apt install python3-venv)" >&2; exit 1; }
fi
if [ "$(cat "$venv/.kontext-sliders-demo" 2>/dev/null)" != "$stamp" ]; then
  echo "== setting up $venv: $torch_spec ($device), then the trainer (pip install -e \".[train]\")"
  run "$venv/bin/python" -m pip install --upgrade pip
  if [ -n "$torch_index" ]; then
    run "$venv/bin/python" -m pip install "$torch_spec" --extra-index-url "$torch_index"
  else
    run "$venv/bin/python" -m pip install "$torch_spec"
  fi
  run "$venv/bin/python" -m pip install -e "$repo[train]"
  if [ -z "${KS_DRY_RUN:-}" ]; then echo "$stamp" > "$venv/.kontext-sliders-demo"; fi
else
  echo "== reusing $venv ($torch_spec, $device)"
fi

out=demo_output  # where the report lands: the last --out given wins, as in argparse
method=kontinuous
previous=""
for arg in "$@"; do
  case $arg in --out=*) out=${arg#--out=} ;; --method=*) method=${arg#--method=} ;; esac
  if [ "$previous" = "--out" ]; then out=$arg; fi
  if [ "$previous" = "--method" ]; then method=$arg; fi
  previous=$arg
done
case $out in /*) ;; *) out="$PWD/$out" ;; esac
echo "== running the $method demo (about 5 minutes on 2 CPU cores)"
status=0
run "$venv/bin/kontext-sliders" demo --out demo_output --require-targets "$@" || status=$?
if [ "$method" = slideredit ]; then
  echo "== report: $out/report_slideredit.md (numbers: $out/metrics_slideredit.json, images: $out/sweep_*.png)"
elif [ "$method" = numeric ]; then
  echo "== report: $out/report_numeric.md (numbers: $out/metrics_numeric.json, images: $out/numeric_*.png)"
elif [ "$method" = knobs ]; then
  echo "== report: $out/report_knobs.md (numbers: $out/metrics_knobs.json, images: $out/knobs_*.png)"
elif [ "$method" = compare ]; then
  echo "== report: $out/report_compare.md (numbers: $out/metrics_compare.json, image: $out/compare_contact_sheet.png)"
else
  echo "== report: $out/report.md (numbers: $out/metrics.json, images: $out/contact_sheet.png, $out/sweep.gif)"
fi
exit "$status"
