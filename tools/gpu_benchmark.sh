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
timeout 120 python3 tools/benchmark_train.py --model=fcn8s --image_size=512 --batch_size=8 \
  --precision=mixed_bfloat16 --steps=20 --warmup=3 --output="$out/fcn8s512_mixed_bfloat16.json" \
  2>&1 | grep -v -E "^(I0000|W0000)" | tail -3
