#!/usr/bin/env bash
# The prepared GPU run (issue 7): under 5 minutes on one H100/H200.
#   1. the benchmark at GPT-2-small size (~124M-parameter transformer, float32 and float64),
#   2. the full init-distance sweep config on CUDA, and its figures,
#   3. the one-step rule report (benchmarks/gpu_rules.py), the screen rows and the real-model
#      rows (issue 23: SmolLM2-135M-Instruct; bench/bench_real.md),
# written with the GPU's description under benchmarks/results/gpu/.
# The same script runs at tiny size on CPU (tests/test_gpu_script.py):
#   SIZE=tiny DEVICE=cpu SWEEP=experiments/configs/init_distance_tiny.toml OUT=/tmp/x bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SIZE=${SIZE:-gpt2}
DEVICE=${DEVICE:-cuda}
SWEEP=${SWEEP:-experiments/configs/init_distance_full.toml}
OUT=${OUT:-benchmarks/results/gpu}
SWEEP_SECONDS=${SWEEP_SECONDS:-180}
RUNS=${RUNS:-2}  # benchmark runs, one after the other (a target is met only if met in each)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
cli() { "$PYTHON" -m sublim_theory.cli.main "$@"; }

mkdir -p "$OUT"
"$PYTHON" - > "$OUT/device.txt" <<'PY'
import platform, torch
print("torch", torch.__version__, "python", platform.python_version())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", f"sm_{p.major}{p.minor}")
else:
    print("cpu", platform.processor() or platform.machine())
PY
cat "$OUT/device.txt"

start=$(date +%s)
cli bench --size "$SIZE" --device "$DEVICE" --runs "$RUNS" --out "$OUT/bench" --screen-traits  # screen: below
echo "bench: $(( $(date +%s) - start )) s"

# The sweep resumes where it stopped, so a timeout here loses nothing: rerun to finish.
start=$(date +%s)
timeout "$SWEEP_SECONDS" "$PYTHON" -m sublim_theory.cli.main sweep --config "$SWEEP" --out "$OUT/sweep" \
  --device "$DEVICE" --quiet || echo "sweep stopped after ${SWEEP_SECONDS} s (resumable: rerun)"
echo "sweep: $(( $(date +%s) - start )) s"
cli plot "$OUT/sweep"

# Issue 12, item 4: the one-step rule report (sgd, momentum, adam, warmed adam, signsgd; full and
# LoRA r = 16) on GPT-2-small- and Qwen2-0.5B-shaped models, as time and peak-memory ratios to
# one training step (benchmarks/gpu_rules.py; SIZE=tiny runs its CPU-sized version).
RULES_SIZE=full
[ "$SIZE" = tiny ] && RULES_SIZE=tiny
start=$(date +%s)
"$PYTHON" benchmarks/gpu_rules.py --size "$RULES_SIZE" --device "$DEVICE" --out "$OUT/rules"
echo "rules: $(( $(date +%s) - start )) s"

# Issue 23: the trait screen in one-epoch equivalents (screen wall time over one training epoch
# on the same documents) for K = 1, 10, 100 traits, the jvp path beside the factored one, on the
# number experiment's LM (SIZE=tiny: its CPU-sized version).
start=$(date +%s)
cli bench --size "$SIZE" --device "$DEVICE" --runs "$RUNS" --screen-only --screen-traits 1 10 100 \
  --out "$OUT/screen"
echo "screen: $(( $(date +%s) - start )) s"

# Issue 23, item 3: the real model (SmolLM2-135M-Instruct, float32, eager attention): engine paths
# per gradient, train_student against plain transformers + peft, sample_from_ids against
# model.generate (bench_real.md). SIZE=tiny runs them on a tiny random Llama saved here.
REAL_MODEL=${REAL_MODEL:-smollm2-135m-instruct}
REAL_CACHE=${REAL_CACHE:-${TMPDIR:-/tmp}/sublim-real-cache}
if [ "$SIZE" = tiny ]; then
  REAL_MODEL="$OUT/tiny_llama"
  "$PYTHON" -c "import sys; from sublim_theory.testing.tiny_llama import save_tiny_llama; save_tiny_llama(sys.argv[1])" "$REAL_MODEL"
fi
start=$(date +%s)
cli bench --real --real-model "$REAL_MODEL" --real-cache "$REAL_CACHE" --size "$SIZE" \
  --device "$DEVICE" --runs "$RUNS" --out "$OUT/bench"
echo "real: $(( $(date +%s) - start )) s"
