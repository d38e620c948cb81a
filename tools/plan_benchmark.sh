#!/usr/bin/env bash
# BENCHMARKS.md §13: the training plan (--plan=auto) against today's flag defaults and a
# hand-set recipe, at one training budget, on a hard synthetic multi-class set: 200 grey
# 256 px frames, 2-px-thin lines (class 3) and rare triangles (class 4, in ~1 frame of 5),
# each under 0.05% of the pixels. Prints each run's test scores and training work.
# Six runs: ~1 hour on 2 cores. SEED=N (default 42) for another seed.
#   bash tools/plan_benchmark.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/segflow_plan}
grep -m1 "model name" /proc/cpuinfo; grep -m2 -E "cpu family|^model\s" /proc/cpuinfo | tr '\n' ' '; echo
python3.11 tools/synthetic_records.py --output="$out" --count=200 --size=256 --num_classes=5 \
  --object_size=0.03,0.08 --objects=3,8 --seed=7 --shapes=ellipse,rectangle,line,triangle \
  --class_probabilities=0.45,0.4,0.1,0.05
# name | flags: each 3.1e8 training pixels: 600 steps x 8 x 256^2 for whole frames, 1200
# steps x 16 x 128^2 for the plan's half-frame windows (the defaults' early stop may end
# theirs sooner). The variants are what a hand-tuner would try. ONLY="plan plan_whole" runs
# those alone.
runs=("plan|--budget=1200steps"
      "defaults|--plan=none --image_size=256 --base_filters=16 --steps_per_epoch=20 --epochs=30"
      "plan_whole|--budget=600steps --image_size=256"
      "plan_whole_no_weights|--budget=600steps --image_size=256 --class_weights=none"
      "plan_whole_full_weights|--budget=600steps --image_size=256 --class_weights=manifest"
      "plan_no_weights|--budget=1200steps --class_weights=none")
for run in "${runs[@]}"; do
  name=${run%%|*}; flags=${run#*|}
  [[ -n ${ONLY:-} && " $ONLY " != *" $name "* ]] && continue
  rm -rf "${out:?}/$name"
  start=$(date +%s)
  # shellcheck disable=SC2086
  python3.11 train.py $flags --seed="${SEED:-42}" --data_dir="$out/records" --model_dir="$out/$name" --noprogress \
    --export=false > "$out/$name.log" 2>&1
  python3.11 - "$out/$name" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
run, wall = sys.argv[1:]
m = json.load(open(run + "/metrics.json"))
flags = dict(line.strip().lstrip("-").split("=", 1) for line in open(run + "/flags.txt") if "=" in line)
side = [int(v) for v in (flags.get("train_crop") or flags["image_size"]).replace("x", ",").split(",")]
steps = len(open(run + "/log.csv").read().splitlines()[1:]) * int(flags["steps_per_epoch"])
print(f"{run.rsplit('/', 1)[1]:9s} test mIoU {m['mean_iou']:.4f}  IoU {[round(v, 3) for v in m['per_class_iou']]}"
      f"  Dice {m['dice']:.4f}  best epoch {m['best_epoch']}  steps run {steps}"
      f"  pixels {steps * int(flags['batch_size']) * side[0] * side[-1]:.2e}  {wall} s")
PY
done
