#!/usr/bin/env bash
# GPU check for the diffusion engine, for a machine with an NVIDIA GPU
# (H100/H200, CUDA 13 driver). CI never runs this. It:
#   1. makes a venv (.bootstrap/gpu-venv) with onnxruntime-gpu 1.31.x and its
#      NVIDIA wheels (cuBLAS, cuDNN, CUDA runtime) plus TensorRT libraries;
#   2. points synthd at that venv's libonnxruntime.so ($ORT_DYLIB_PATH) with
#      the NVIDIA libraries on LD_LIBRARY_PATH;
#   3. runs `synthd doctor`, then `synthd bench` on cpu, cuda and tensorrt
#      (fp16, engine + timing cache under .bootstrap/gpu-cache), printing the
#      JSON figure line of each.
# Target: under ~8 minutes. Offline machines: set PIP_FIND_LINKS to a folder of
# pre-downloaded wheels (pip honours it) and PIP_NO_INDEX=1.
#
#   scripts/gpu-check.sh [PIPELINE] [STEPS] [BATCH]
#
# Overrides: ORT_GPU_SPEC (default "onnxruntime-gpu[cuda,cudnn]==1.31.*"),
# TRT_SPEC (default "tensorrt-cu13-libs"; empty skips TensorRT), SYNTHD_BIN
# (a prebuilt synthd; else cargo build --release).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
pipeline=${1:-}
steps=${2:-25}
batch=${3:-8}
if [ -z "$pipeline" ]; then
    if [ -f fixtures/models/brain-inpaint-96.onnx ] && [ -f bench/brain-inpaint-96.toml ]; then
        pipeline=bench/brain-inpaint-96.toml
    else
        pipeline=bench/bench-96.toml
    fi
fi
started=$(date +%s)
say() { echo "== [$(( $(date +%s) - started ))s] $*"; }

say "GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi not available"

venv=.bootstrap/gpu-venv
ort_spec=${ORT_GPU_SPEC:-"onnxruntime-gpu[cuda,cudnn]==1.31.*"}
trt_spec=${TRT_SPEC-"tensorrt-cu13-libs"}
if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    python3 -m venv "$venv"
fi
say "pip install $ort_spec ${trt_spec:+and $trt_spec}"
timeout 300 "$venv/bin/pip" install --quiet --disable-pip-version-check "$ort_spec" numpy \
    || { echo "error: cannot install $ort_spec; set PIP_FIND_LINKS to a wheel folder on offline machines"; exit 1; }
if [ -n "$trt_spec" ]; then
    timeout 240 "$venv/bin/pip" install --quiet --disable-pip-version-check "$trt_spec" \
        || echo "warning: $trt_spec did not install; the TensorRT run will show synthd's fallback message"
fi

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ORT_DYLIB_PATH=$(ls "$site"/onnxruntime/capi/libonnxruntime.so* 2>/dev/null | sort | tail -n 1)
if [ -z "$ORT_DYLIB_PATH" ]; then
    echo "error: no libonnxruntime.so in $site/onnxruntime/capi"
    exit 1
fi
export ORT_DYLIB_PATH
# onnxruntime-gpu's CUDA/TensorRT provider libraries sit next to it; the
# NVIDIA wheels keep theirs under nvidia/*/lib and tensorrt_libs.
libs=$(dirname "$ORT_DYLIB_PATH")
for d in "$site"/nvidia/*/lib "$site"/nvidia/*/*/lib "$site"/tensorrt_libs "$site"/tensorrt; do
    [ -d "$d" ] && libs="$libs:$d"
done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "ORT_DYLIB_PATH=$ORT_DYLIB_PATH"

bin=${SYNTHD_BIN:-}
if [ -z "$bin" ]; then
    if [ -x target/release/synthd ]; then
        bin=target/release/synthd
    else
        say "cargo build --release"
        cargo build --release --quiet --bin synthd || exit 1
        bin=target/release/synthd
    fi
fi

say "synthd doctor"
layout=$(mktemp -d)
"$bin" init "$layout/synthd" >/dev/null && "$bin" doctor --config "$layout/synthd/synthd.toml" | sed 's/^/  /'

cache=$root/.bootstrap/gpu-cache
mkdir -p "$cache"
fp16_pipeline=$layout/fp16.toml
# The TensorRT run uses half precision: a copy of the pipeline with fp16 = true.
sed "s|^model = \"\(.*\)\"|model = \"$(cd "$(dirname "$pipeline")" && pwd)/\1\"|; /^\[synth\]/a fp16 = true" "$pipeline" > "$fp16_pipeline"

results=()
for provider in cpu cuda tensorrt; do
    file=$pipeline
    [ "$provider" = tensorrt ] && file=$fp16_pipeline
    for pass in 1 2; do
        # TensorRT's first pass builds the engine; the second reads the cache.
        [ "$provider" != tensorrt ] && [ "$pass" = 2 ] && continue
        say "bench $provider (pass $pass)"
        out=$(timeout 240 "$bin" bench --pipeline "$file" --provider "$provider" --steps "$steps" --batch "$batch" \
            --cache-dir "$cache" 2>&1)
        echo "$out" | grep -v '^step ' | sed 's/^/  /'
        json=$(echo "$out" | tail -n 1)
        case "$json" in "{"*) results+=("$provider pass $pass: $json") ;; *) results+=("$provider pass $pass: FAILED") ;; esac
    done
done
ls -la "$cache"/tensorrt 2>/dev/null | sed 's/^/  cache: /'

# Two lanes on one GPU: one lane's host-side sampler step overlaps the other's
# model run. Compare with "cuda pass 1" above.
say "bench cuda, 2 lanes"
out=$(timeout 240 "$bin" bench --pipeline "$pipeline" --provider cuda --steps "$steps" --batch "$batch" --lanes 2 \
    --cache-dir "$cache" 2>&1)
echo "$out" | grep -v '^step ' | sed 's/^/  /'
json=$(echo "$out" | tail -n 1)
case "$json" in "{"*) results+=("cuda 2 lanes: $json") ;; *) results+=("cuda 2 lanes: FAILED") ;; esac

say "figures"
printf '%s\n' "${results[@]}"
