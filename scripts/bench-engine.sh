#!/usr/bin/env bash
# The engine benchmark: `synthd bench` (release build) beside a plain Python
# onnxruntime + numpy loop (bench/python_loop.py) on the same model, sampler,
# steps and batch. Prints both JSON lines and the ratios against the targets
# (overhead ratio <= 1.05; throughput >= 1.2x the Python loop).
#
#   scripts/bench-engine.sh [PIPELINE] [STEPS] [BATCH] [SLICES] [THREADS] [REPEAT] [LANES]
#
# LANES (default 1) sessions run side by side in synthd, as `[runtime]
# inference_lanes` does in the daemon, each on its own batches with the cores
# shared out; the Python loop is always the plain single-session loop.
#
# Each side measures REPEAT runs (default 3) and reports its fastest, so that
# load from other processes on a shared machine skews neither side much.
#
# The Python side runs in a bench-only venv (.bootstrap/bench-venv) with
# onnxruntime==1.32.0, never in the test venv.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
pipeline=${1:-bench/bench-96.toml}
steps=${2:-25}
batch=${3:-8}
slices=${4:-64}
threads=${5:-0}
repeat=${6:-3}
lanes=${7:-1}

venv=.bootstrap/bench-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import onnxruntime, numpy" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "onnxruntime==1.32.0" numpy
fi
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$root/.bootstrap/onnxruntime/libonnxruntime.so}

cargo build --release --quiet --bin synthd
model=$(cd "$(dirname "$pipeline")" && realpath "$(sed -n 's/^model = "\(.*\)"/\1/p' "$(basename "$pipeline")")")

echo "== synthd bench ($pipeline, $steps steps, batch $batch, $slices slices, threads $threads, lanes $lanes)"
target/release/synthd bench --pipeline "$pipeline" --steps "$steps" --batch "$batch" --slices "$slices" --threads "$threads" \
    --lanes "$lanes" --repeat "$repeat" 2>/dev/null | tee /tmp/synthd-bench.out
rust_json=$(tail -n 1 /tmp/synthd-bench.out)

echo "== python loop (onnxruntime $("$venv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)'))"
py_json=$("$venv/bin/python" bench/python_loop.py --model "$model" --steps "$steps" --batch "$batch" --slices "$slices" --threads "$threads" --repeat "$repeat" | tail -n 1)
echo "$py_json"

"$venv/bin/python" - "$rust_json" "$py_json" <<'PY'
import json, sys
rust, py = json.loads(sys.argv[1]), json.loads(sys.argv[2])
speedup = rust["slices_per_second"] / py["slices_per_second"]
print(f"synthd: {rust['slices_per_second']:.1f} slices/s, overhead ratio {rust['overhead_ratio']:.3f} (target <= 1.05)")
print(f"python: {py['slices_per_second']:.1f} slices/s, overhead ratio {py['overhead_ratio']:.3f}")
print(f"throughput vs python loop: {speedup:.2f}x (target >= 1.2x)")
print(json.dumps({"synthd": rust, "python": py, "speedup": speedup}))
PY
