#!/usr/bin/env bash
# BENCHMARKS.md §8 (issue 22): size, CPU latency per image and agreement with Keras of every
# export format (Keras, SavedModel, ONNX in onnxruntime, TFLite float32/float16/int8 in
# LiteRT) for a UNet and a ResNet50 UNet briefly trained on the shared membrane data
# (MobileNetV2's BatchNorm momentum, 0.999, leaves it predicting one class after so few
# steps from random weights: BENCHMARKS.md §11).
#   bash tools/formats_benchmark.sh [WORK_DIR]   (ResNet50 UNet: 20 epochs in BENCHMARKS §8.1)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/segflow_formats}
grep -m1 "model name" /proc/cpuinfo; grep -m2 -E "cpu family|^model\s" /proc/cpuinfo | tr '\n' ' '; echo
python3.11 tools/prepare_dataset.py --input=../shared/data/membrane --output="$work/records" --overwrite
for model in "unet --base_filters=16" "unet --encoder=resnet50"; do
  name=$(echo "$model" | sed 's/--encoder=//; s/--base_filters=16/classic/; s/ /_/g')
  epochs=15; [[ $model == *resnet50* ]] && epochs=20
  # shellcheck disable=SC2086
  python3.11 train.py --plan=none --model=$model --data_dir="$work/records" --model_dir="$work/$name" \
    --image_size=256 --batch_size=4 --epochs=$epochs --steps_per_epoch=10 --learning_rate=1e-3 \
    --loss=ce --aug_hflip --aug_vflip --dropout=0 --patience=40 --cache \
    --mixed_precision=float32 --noprogress | grep "^test:"
  python3.11 tools/benchmark_inference.py --model="$work/$name/model.keras" \
    --data_dir="$work/records" --rounds=3 --repeats=10
done
