#!/bin/bash
# The main job with the real-data main-job test's settings, on the package found under SRC (a checkout's src/),
# into OUT (replaced): two versions are timed on it as whole processes, alternating, the ratio taken pair by pair.
#
#   AHE_DATA=../shared/data/ahe64 bench/main_job.sh OLD/src /tmp/mj-old   # a worktree of the older commit
#   AHE_DATA=../shared/data/ahe64 bench/main_job.sh src /tmp/mj-new
set -euo pipefail
src=$(cd "$1" && pwd)
out=$2
here=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$out"
exec env PYTHONPATH="$src" OMP_NUM_THREADS=2 "$here/.venv/bin/python" -m heritagelens run \
    --data "${AHE_DATA:-../shared/data/ahe64}" --out "$out" --quiet --epochs 5 \
    --set 'model.widths=[16,32,64,128]' --set train.limit_train=2000 \
    --set gallery.robust_from=standard --set gallery.robust_epochs=1 \
    --set gallery.samples=1 --set gallery.floor_samples=1 --set dream.steps=16 \
    --set "gallery.judges_dir=$out-judges" --set train.threads=2
