#!/usr/bin/env bash
# One GPU script (issue 16): the `gpu` tests, then the attention benchmark on an 8B-shaped stack
# (32 layers, 32 query / 8 KV heads, head dim 128, bfloat16, random weights) at 32k and 128k
# tokens, one sequence and a batch of 4 through the engine's modes, in under 8 minutes.
#
# Needs only this repository and a Python with torch, Triton and pytest: nothing is installed
# (PYTHONPATH is the repository root) and nothing is fetched. From anywhere:
#   bash benchmarks/gpu.sh                 # or: make bench-gpu
# Everything goes to stdout and to ${OUT:-.}/gpu-bench.md (Markdown). PYTHON (default python3)
# picks the interpreter, MNEME_GPU_BUDGET_S (default 470) the seconds all steps may take
# together: each step runs under `timeout` with what is left of it. Exits 1 at once without a
# GPU; otherwise runs every step and exits 1 if any failed or was cut short.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
report="${OUT:-.}/gpu-bench.md"
budget="${MNEME_GPU_BUDGET_S:-470}"
deadline=$((SECONDS + budget))
failed=()
# The 8B shape. A retrieval graph takes 4 s (32k) to 15 s (128k) a layer and sequence to build on
# one CPU thread, and a batch's graph walk ~0.8 s a layer and row at 32k: retrieval is built and
# timed on 4 layers (1 for the batch of 4) and its time scaled to 32 (caption and rows say so).
# Estimated from CPU timings: ~1 min of tests, ~2 min one sequence, ~1 min the batch.
shape=(--device cuda --dtype bfloat16 --layers 32 --kv-heads 8 --group 4 --dim 128
  --repeats 3 --threads 1)

# limit CAP: seconds a step may take, at most CAP and what is left of the budget.
limit() {
  local left=$((deadline - SECONDS))
  echo $(($1 < left ? $1 : left))
}

# run NAME CAP COMMAND...: COMMAND under `timeout`, its status noted; a spent budget skips it.
run() {
  local name=$1 seconds status=0 start=$SECONDS
  seconds=$(limit "$2")
  shift 2
  if ((seconds < 10)); then
    echo "skipped: the ${budget} s budget is spent"
    failed+=("$name (skipped)")
    return 0
  fi
  timeout --signal=INT --kill-after=10 "$seconds" "$@" || status=$?
  echo
  echo "_${name}: exit ${status} after $((SECONDS - start)) s (limit ${seconds} s)_"
  if ((status == 124)); then
    failed+=("$name (timed out)")
  elif ((status != 0)); then
    failed+=("$name (exit $status)")
  fi
}

# bench NAME CAP ARGS...: the attention benchmark's Markdown, then its progress log fenced.
bench() {
  local name=$1 cap=$2 log
  shift 2
  log="$(mktemp)"
  echo
  echo "## $name"
  echo
  run "$name" "$cap" "$python" -m benchmarks.attention "${shape[@]}" "$@" 2>"$log"
  echo
  echo '```text'
  cat "$log"
  echo '```'
  rm -f "$log"
}

main() {
  cd "$repo"
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  if ! command -v nvidia-smi >/dev/null; then
    echo "gpu.sh: no nvidia-smi here: this script needs an NVIDIA GPU" >&2
    return 1
  fi
  if ! "$python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "gpu.sh: torch under $python sees no CUDA GPU (or is not installed)" >&2
    return 1
  fi

  echo "# Mneme on a GPU: \`benchmarks/gpu.sh\`, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```text'
  nvidia-smi
  "$python" - <<'EOF' || echo "(the version report failed)"
import platform

import torch

print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
print(f"device: {torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
try:
    import triton
except ImportError:
    print("triton: not importable (the engine's modes fall back to the PyTorch twins)")
else:
    print(f"triton {triton.__version__}")
EOF
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo '```'

  # Only the modules holding `gpu` tests (the kernels', and the benchmark's own at a tiny shape):
  # the others import the engine, whose dependencies (pydantic, ...) a bare GPU image lacks.
  # --noconftest: tests/conftest.py imports the stores (SQLAlchemy, Chroma) and only adds the
  # no-CUDA skip. Warnings are errors here, and without pytest-asyncio its ini option is an
  # unknown-option warning, hence the one -W.
  echo
  echo "## gpu tests"
  echo
  echo '```text'
  mapfile -t modules < <(grep -rl --include='test_*.py' 'pytest.mark.gpu' tests/serving/kernels \
    tests/benchmarks/test_attention.py)
  if ((${#modules[@]} == 0)); then
    echo "no test module holds a gpu test"
    failed+=("gpu tests (none found)")
  else
    run "gpu tests" 100 "$python" -m pytest -m gpu -q --noconftest -p no:cacheprovider \
      -W ignore::pytest.PytestConfigWarning "${modules[@]}" 2>&1
  fi
  echo '```'

  bench "attention: one sequence, 32 layers, 32k and 128k tokens" 240 \
    --context 32768 131072 --retrieval-layers 4
  bench "attention: a batch of 4 through the engine's modes, 32 layers, 32k tokens" 180 \
    --context 32768 --batch 4 --retrieval-layers 1

  echo
  if ((${#failed[@]})); then
    summary="$(printf '%s; ' "${failed[@]}")"
    echo "**failed:** ${summary%; }"
    return 1
  fi
  echo "All steps passed in $SECONDS s."
}

mkdir -p "$(dirname "$report")"
main 2>&1 | tee "$report"
