#!/usr/bin/env bash
# The GPU benchmark suite in one call: bf16 train-step throughput, MFU and memory, ours against
# PyTorch on the same chip, most important first, each run bounded so that one failure or a slow
# compile costs only its own row.
#
#   bash benchmarks/gpu.sh OUT_DIR [SECONDS]
#
# Runs from the repository root with the machine's own jax[cuda], flax, optax, torch and
# transformers (the package need not be installed). Stops starting new runs after SECONDS
# (default 330). Writes OUT_DIR/gpu_results.json (one object per run) and OUT_DIR/gpu_log.txt,
# and prints a table last. Figures from an H200 are in the README's Benchmarks section.
set -u
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [SECONDS]}
budget=${2:-330}
mkdir -p "$out" /tmp/gpu_bench
log="$out/gpu_log.txt"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL=2
# JAX takes a share of the GPU up front; leave the rest to PyTorch, which runs in the same process.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
peak=989  # dense bf16 TFLOP/s of an H100/H200 SXM, the datasheet figure MFU is quoted against
start=$SECONDS

run() {  # run NAME TIMEOUT ARGS...: one benchmark module, its JSON kept under NAME
  local name=$1 limit=$2; shift 2
  if (( SECONDS - start > budget )); then echo "skipped $name: over the ${budget}s budget" | tee -a "$log"; return; fi
  echo "=== $name: $* ($(( SECONDS - start ))s in)" | tee -a "$log"
  timeout "$limit" python -m "$@" --json "/tmp/gpu_bench/$name.json" >>"$log" 2>&1 \
    || echo "FAILED $name (exit $?), see gpu_log.txt" | tee -a "$log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  python -c "import jax, flax, optax, torch, transformers; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee -a "$log"

# The chip's bf16 matmul ceiling as JAX reaches it, to read MFU against a measured rate too.
timeout 60 python - >"/tmp/gpu_bench/ceiling.json" 2>>"$log" <<'EOF'
import json, os, time, jax, jax.numpy as jnp
n = int(os.environ.get("CEILING_N", 8192))
a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.bfloat16) for i in range(2))
mm = jax.jit(lambda a, b: a @ b)
mm(a, b).block_until_ready()
t = time.perf_counter()
for _ in range(20):
    c = mm(a, b)
c.block_until_ready()
print(json.dumps({"benchmark": "matmul_ceiling", "n": n, "tflops": 20 * 2 * n**3 / (time.perf_counter() - t) / 1e12}))
EOF

ts="benchmarks.train_step --dtype bfloat16 --steps 10 --peak-tflops $peak"
run vitb16_sae  150 $ts --model vitb16 --batch 256 --regularizer sae_add_remove
run vitb16_none 150 $ts --model vitb16 --batch 256 --regularizer none
run sae_default  90 benchmarks.sae_train --d 512 --dict-size 2048 --k 16 --batch 1024 --steps 50
run vitb16_cache 120 $ts --model vitb16 --batch 256 --regularizer sae_add_remove --teacher-cache --skip-torch
# What the launch scripts' deterministic kernels cost (DETERMINISTIC=1 there).
XLA_FLAGS="--xla_gpu_deterministic_ops=true ${XLA_FLAGS:-}" \
  run vitb16_sae_deterministic 150 $ts --model vitb16 --batch 256 --regularizer sae_add_remove --skip-torch
run forward_vitb16 90 benchmarks.clip_forward --model vitb16 --batch 512 --steps 10 --dtype bfloat16 --peak-tflops $peak
run siglip_b16_sae 150 $ts --model siglip_b16 --batch 256 --regularizer sae_add_remove
run forward_siglip_b16 90 benchmarks.clip_forward --model siglip_b16 --batch 512 --steps 10 --dtype bfloat16 --peak-tflops $peak
run sae_large    90 benchmarks.sae_train --d 768 --dict-size 24576 --k 32 --batch 4096 --steps 50
run vitl14_sae  150 $ts --model vitl14 --batch 128 --regularizer sae_add_remove

# Do the numerics tests hold on the GPU too (XLA's default matmul precision there is not fp32's)?
if (( SECONDS - start <= budget )); then
  echo "=== GPU tests" | tee -a "$log"
  timeout 100 python -m pytest -q -m "not slow" -p no:cacheprovider tests/test_clip.py tests/test_sae.py \
    tests/test_regularizers.py 2>&1 | tail -15 | tee -a "$log"
fi

python - "$out" <<'EOF' 2>&1 | tee -a "$log"
import glob, json, os, sys
files = [f for f in sorted(glob.glob("/tmp/gpu_bench/*.json")) if os.path.getsize(f)]
rows = [{"run": os.path.basename(f)[:-5], **json.load(open(f))} for f in files]
json.dump(rows, open(os.path.join(sys.argv[1], "gpu_results.json"), "w"), indent=1)
fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
keys = ["run", "benchmark", "model", "batch", "regularizer", "teacher_cache", "ms_per_step", "images_per_s", "tflops", "mfu",
        "peak_device_mib", "torch_ms_per_step", "torch_images_per_s", "torch_mfu", "torch_peak_device_mib",
        "speedup_vs_torch", "samples_per_s", "samples_per_s_dense_kernels", "torch_samples_per_s",
        "jax_images_per_s", "torch_images_per_s", "n"]
for row in rows:
    print(" | ".join(f"{k}={fmt(row[k])}" for k in dict.fromkeys(keys) if k in row))
EOF
echo "total $(( SECONDS - start ))s"
