#!/usr/bin/env bash
# The GPU measurement of BENCHMARKS.md, as one script for a lent GPU machine that has JAX
# but no TensorFlow. Needs .whl/ with keras 3.15.1, namex and optree wheels (see BUILD.md).
#   bash tools/gpu_benchmark.sh OUT_DIR
set -u
out=${1:-${OUT:-/tmp/gpu_bench}}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python3 -c "import jax, keras; print('jax', jax.__version__, 'keras', keras.__version__, jax.devices())" | tee -a "$out/gpu.txt"
for precision in float32 mixed_float16 mixed_bfloat16; do
  timeout 170 python3 tools/benchmark_train.py --model=unet --image_size=512 --batch_size=8 \
    --precision=$precision --steps=30 --warmup=3 --output="$out/unet512_$precision.json" \
    2>&1 | grep -v -E "^(I0000|W0000)" | tail -4
done
# issues 17 and 25: every model at mixed_bfloat16, batch 8 and 16 (training only)
for batch in 8 16; do
  for model in "unet" "unet --encoder=resnet50 --base_filters=16" \
      "unet --encoder=mobilenetv2 --base_filters=16" \
      "unet --encoder=efficientnetb0 --base_filters=16" "fcn8s" \
      "deeplabv3plus --encoder=resnet50" "deeplabv3plus --encoder=mobilenetv2" \
      "deeplabv3plus --encoder=efficientnetb0"; do
    name=$(echo "$model" | tr -d ' ' | sed 's/--encoder=/_/; s/--base_filters=16//')
    # shellcheck disable=SC2086
    timeout 150 python3 tools/benchmark_train.py --model=$model --image_size=512 \
      --batch_size=$batch --precision=mixed_bfloat16 --steps=20 --warmup=3 --mode=train \
      --output="$out/${name}512_b${batch}_mixed_bfloat16.json" \
      2>&1 | grep -v -E "^(I0000|W0000)" | tail -2
  done
done
