#!/usr/bin/env bash
# Run on the lent GPU machine, from the repository root: bash benchmarks/gpu/device.sh STEP...
# Steps (in the order given):
#   stash         keep the model parts this call carried (.gpu/smollm2.gguf.part-*) in
#                 /root/inferno-model, which lives as long as the machine stays warm
#   tests         the gpu-marked tests of inferno-memory, inferno-inference, inferno-health
#   memory-bench  benchmarks/memory_bench.py (the GPU section runs against CuPy and cudaMalloc)
#   engine-bench  benchmarks/engine_gpu_bench.py, on the reassembled GGUF when every part and the
#                 checksum are there, else on the default model's shapes with random weights
#   serve-smoke   inferno serve on the GPU (bf16) with the reassembled model: readiness, one chat
#                 completion, the metrics; fails if the model is not all here
#   engine-bench-torch-kernels
#                 the same with --kernel-backend torch (PyTorch ops only), for comparison
# Logs and JSON results go to $OUT (the device tool brings them back).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /root/inferno-model
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
PYTHONPATH=/tmp/site:$(printf '%s:' "$PWD"/packages/*/src "$PWD"/apps/*/src)
export PYTHONPATH PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' |
  tee -a "$OUT/gpu.txt"

model_args=()
assemble() {
  local dir=/root/inferno-model file=SmolLM2-135M-Instruct.Q4_1.gguf
  if [ -f .gpu/smollm2.gguf.sha256 ] && compgen -G "$dir/smollm2.gguf.part-*" >/dev/null; then
    cat "$dir"/smollm2.gguf.part-* >"$dir/$file"
    if (cd "$dir" && sha256sum --check --quiet "$OLDPWD/.gpu/smollm2.gguf.sha256"); then
      model_args=(--default-model "$dir/$file")
      return
    fi
  fi
  echo "the default model's parts are not all here: its shapes with random weights instead"
}

status=0
for step in "$@"; do
  echo "=== $step"
  case "$step" in
    stash) cp -v .gpu/smollm2.gguf.part-* /root/inferno-model/ ;;
    tests)
      python3 -m pytest -m gpu -p no:cacheprovider packages/inferno-memory/tests \
        packages/inferno-inference/tests packages/inferno-health/tests 2>&1 |
        tee "$OUT/gpu_tests.log"
      status=$((status | PIPESTATUS[0]))
      ;;
    memory-bench)
      python3 benchmarks/memory_bench.py --out "$OUT/memory.json" 2>&1 | tee "$OUT/memory.log"
      status=$((status | PIPESTATUS[0]))
      ;;
    engine-bench)
      assemble
      python3 benchmarks/engine_gpu_bench.py "${model_args[@]}" --out "$OUT/engine_gpu.json" \
        2>&1 | tee "$OUT/engine_gpu.log"
      status=$((status | PIPESTATUS[0]))
      ;;
    engine-bench-torch-kernels)
      assemble
      python3 benchmarks/engine_gpu_bench.py "${model_args[@]}" --kernel-backend torch \
        --out "$OUT/engine_gpu_torch_kernels.json" 2>&1 | tee "$OUT/engine_gpu_torch_kernels.log"
      status=$((status | PIPESTATUS[0]))
      ;;
    serve-smoke)
      assemble
      if [ ${#model_args[@]} -eq 0 ]; then status=1; continue; fi
      python3 -m inferno_backend.cli serve --model "${model_args[1]}" --device cuda \
        --served-model-name default --dtype bfloat16 --port 8011 --log-format console \
        >"$OUT/serve.log" 2>&1 &
      server=$!
      for _ in $(seq 180); do
        curl -sf http://127.0.0.1:8011/health/ready >/dev/null && break
        sleep 1
      done
      curl -sS http://127.0.0.1:8011/v1/chat/completions -H 'Content-Type: application/json' \
        -d '{"model": "default", "max_tokens": 32, "temperature": 0,
             "messages": [{"role": "user", "content": "What is the capital of France?"}]}' |
        tee "$OUT/serve_answer.json"
      echo
      grep -q '"content"' "$OUT/serve_answer.json" || status=1
      curl -sS http://127.0.0.1:8011/metrics | grep -E '^inferno:(kv|memory|num_requests)'
      curl -sS http://127.0.0.1:8011/health/ready
      echo
      kill "$server"
      wait "$server"
      tail -5 "$OUT/serve.log"
      ;;
    *) echo "unknown step $step" >&2; status=1 ;;
  esac
done
exit "$status"
