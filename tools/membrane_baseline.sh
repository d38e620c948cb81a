#!/usr/bin/env bash
# The membrane recipe of BENCHMARKS.md §12.1: prepare the shared ISBI 2012 membrane data, train
# recipes/membrane.flags once per seed on the CPU, print each seed's wall time and test
# metrics (membrane = class 0) and training work (steps x batch x pixels a window), then
# the median; then the same test frames scored as served with test-time horizontal flips
# (tools/evaluate.py --tta=hflip on the best checkpoint: the flips the recipe trains with).
#   bash tools/membrane_baseline.sh [WORK_DIR] [SEED ...]      (default seeds: 1 2 3)
#   RECIPE=recipes/membrane_448.flags bash tools/membrane_baseline.sh ...   (another recipe: §4's)
#   SPLIT=80,10,10 bash tools/membrane_baseline.sh ...   (another split; the test split's 3
#   frames stay the same while its share is 10%: the split cuts one seeded permutation)
#   TTA=none bash tools/membrane_baseline.sh ...   (no flip-averaged scoring; hvflip: both)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/segflow_membrane}
shift || true
seeds=${*:-1 2 3}
recipe=${RECIPE:-recipes/membrane.flags}
split=${SPLIT:-70,20,10}
tta=${TTA:-hflip}
# The recipes' times assume a CPU with bfloat16 hardware (BENCHMARKS.md §4, §10, §12.1): say so
# now rather than in a log read hours later
TF_CPP_MIN_LOG_LEVEL=2 python -c 'import sys; from segtrain import distribute
w = distribute.slow_precision_warning(sys.argv[1]); w and print("warning:", w)' \
  "$(sed -n 's/^--mixed_precision=//p' "$recipe")"
python tools/prepare_dataset.py --input=../shared/data/membrane --output="$work/records" \
  --split="$split" --overwrite
for seed in $seeds; do
  rm -rf "$work/run_$seed"
  start=$(date +%s)
  python train.py --flagfile="$recipe" --data_dir="$work/records" \
    --model_dir="$work/run_$seed" --seed="$seed" --noprogress > "$work/run_$seed.log" 2>&1
  echo "seed $seed: wall $(( $(date +%s) - start )) s ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
  if [ "$tta" != none ]; then
    python tools/evaluate.py --model="$work/run_$seed/best.keras" --data_dir="$work/records" \
      --split=test --tta="$tta" --output="$work/run_$seed/eval_test_$tta.json" \
      >> "$work/run_$seed.log" 2>&1
  fi
done
python - "$work" "$tta" $seeds <<'PY'
import csv, json, os, statistics, sys
work, tta, seeds = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = [json.load(open(f"{work}/run_{s}/metrics.json")) for s in seeds]


def work_of(seed):
    """Training pixels: steps x batch x pixels a training example (window or image)."""
    flags = dict(line.strip().lstrip("-").split("=", 1) for line in
                 open(f"{work}/run_{seed}/flags.txt") if "=" in line)
    size = flags.get("train_crop") or flags["image_size"]
    side = [int(v) for v in size.replace("x", ",").split(",")]
    steps = int(flags["epochs"]) * int(flags["steps_per_epoch"])
    return steps, steps * int(flags["batch_size"]) * side[0] * side[-1]


def loss_jumps(seed):
    """Epochs whose mean training loss rose over 30% above the epoch before's: a sign of a
    step that diverged, which the run then spends epochs recovering from (BENCHMARKS.md §12.1)."""
    loss = [float(row["loss"]) for row in csv.DictReader(open(f"{work}/run_{seed}/log.csv"))]
    return [f"{epoch + 1} ({loss[epoch - 1]:.2f} -> {loss[epoch]:.2f})"
            for epoch in range(1, len(loss)) if loss[epoch] > 1.3 * loss[epoch - 1]]


def scores(m):
    return (f"membrane Dice {m['per_class_dice'][0]:.4f}, cell Dice {m['per_class_dice'][1]:.4f}, "
            f"mIoU {m['mean_iou']:.4f}")


def medians(results):
    return (f"membrane Dice {statistics.median(m['per_class_dice'][0] for m in results):.4f}, "
            f"mIoU {statistics.median(m['mean_iou'] for m in results):.4f}")


for seed, m in zip(seeds, rows):
    steps, pixels = work_of(seed)
    print(f"seed {seed}: {scores(m)}, best epoch {m['best_epoch']}, {steps} steps, "
          f"{pixels:.3g} training pixels; training loss jumps at epochs: "
          f"{', '.join(loss_jumps(seed)) or 'none'}")
print(f"median: {medians(rows)}")
served_paths = [f"{work}/run_{seed}/eval_test_{tta}.json" for seed in seeds]
if tta != "none" and all(os.path.isfile(path) for path in served_paths):
    served = [json.load(open(path)) for path in served_paths]
    for seed, m in zip(seeds, served):
        print(f"seed {seed}, served with --tta={tta}: {scores(m)}")
    print(f"median served with --tta={tta}: {medians(served)}")
PY
