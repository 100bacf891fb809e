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
#
# Offline mode, for the lent GPU machine (no network, no Rust toolchain, and
# a device call carries only ~40 MiB beside the tracked tree; docs/gpu.md has
# the call sequence):
#
#   scripts/gpu-check.sh prepare   here: onnxruntime-gpu's libraries (CUDA
#       kernels for one GPU architecture only, GPU_ARCH, default 90 = H100 /
#       H200) and the release synthd, as an xz tarball split into per-call
#       folders .gpu-parts/1, .gpu-parts/2, ... (ignored by git)
#   scripts/gpu-check.sh receive   device, one call per folder, carry
#       [".gpu-parts/N"]: keeps the part in /tmp/gpu-parts (a warm machine
#       keeps /tmp between calls; the checkout is sent anew each call)
#   scripts/gpu-check.sh run [PIPELINE] [STEPS] [BATCH]   device, the last
#       call (carrying the last folder): receives, checks the parts, unpacks
#       into /tmp/ort-gpu, then the same doctor + benches as the online path,
#       with the CUDA/cuDNN/cuBLAS libraries of the device's torch install.
#
# prepare's overrides: GPU_WHEEL_DIR (download + staging, outside the repo;
# /work/gpuwheel), ORT_GPU_VERSION (1.31.1), GPU_ARCH (90; "all" keeps every
# architecture: ~4 more calls), PART_MIB (what fits beside the tracked tree,
# ~34), SYNTHD_BIN (else
# target/release/synthd). run's: SYNTHD_BIN (else the one in the parts).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mode=online
case ${1:-} in
    prepare | receive | run)
        mode=$1
        shift
        ;;
esac
# On the device the full log goes to $OUT too: the call's reply keeps only
# the last 12,000 characters of the output.
if [ "$mode" = run ] && [ -n "${OUT:-}" ] && [ -z "${GPU_CHECK_TEED:-}" ]; then
    mkdir -p "$OUT"
    GPU_CHECK_TEED=1 "$root/scripts/gpu-check.sh" run "$@" 2>&1 | tee -a "$OUT/gpu-check.log"
    exit "${PIPESTATUS[0]}"
fi
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
# A device command may run 10 minutes: in run mode every bench's timeout is
# cut to what is left of RUN_SECONDS (540), so the figures so far print.
budget=${RUN_SECONDS:-}
[ "$mode" = run ] && budget=${budget:-540}
limit() {
    local l=240
    if [ -n "$budget" ]; then
        local left=$((budget - ($(date +%s) - started) - 15))
        [ "$left" -lt "$l" ] && l=$left
    fi
    echo "$l"
}

parts_dir=.gpu-parts
recv_dir=/tmp/gpu-parts
unpack_dir=/tmp/ort-gpu
tarball=ort-gpu.tar.xz

# prepare (here, with the network): download onnxruntime-gpu, keep only its
# shared libraries, and split them into parts small enough for one device call.
prepare() {
    set -e
    local wd=${GPU_WHEEL_DIR:-/work/gpuwheel} version=${ORT_GPU_VERSION:-1.31.1} arch=${GPU_ARCH:-90}
    # A call carries at most 64 MiB with the tracked tree (~28 MiB now): a
    # part is as big as fits beside it, less 2 MiB for untracked files.
    local tracked room part_mib
    tracked=$(git ls-files -z | xargs -0 stat -c %s | awk '{ s += $1 } END { print s }')
    room=$(( (64 * 1024 * 1024 - tracked) / 1024 / 1024 - 2 ))
    part_mib=${PART_MIB:-$room}
    if [ "$part_mib" -gt "$room" ]; then
        echo "error: PART_MIB=$part_mib but only ~$room MiB fit beside the $((tracked / 1024 / 1024)) MiB tracked tree"
        exit 1
    fi
    local exclude
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qxF "/$parts_dir/" "$exclude" 2>/dev/null || echo "/$parts_dir/" >> "$exclude"
    mkdir -p "$wd"
    local wheel
    wheel=$(ls "$wd"/onnxruntime_gpu-"$version"-cp312-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
        say "pip download onnxruntime-gpu==$version (~255 MB)"
        python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
            --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
            -d "$wd" "onnxruntime-gpu==$version"
        wheel=$(ls "$wd"/onnxruntime_gpu-"$version"-cp312-*.whl | head -n 1)
    fi
    local stage=$wd/stage
    rm -rf "$stage"
    mkdir -p "$stage/ort" "$stage/fallback" "$stage/bin"
    # synthd loads libonnxruntime.so itself (ORT_DYLIB_PATH), and it loads the
    # provider libraries from its own folder: the Python binding is not needed.
    say "extracting the libraries from $(basename "$wheel")"
    (cd "$stage/ort" && unzip -q -j "$wheel" 'onnxruntime/capi/libonnxruntime.so*' \
        'onnxruntime/capi/libonnxruntime_providers_shared.so' 'onnxruntime/capi/libonnxruntime_providers_cuda.so' \
        'onnxruntime/capi/libonnxruntime_providers_tensorrt.so')
    if [ "$arch" != all ]; then
        # The CUDA provider holds its kernels for sm_75 ... sm_120 (218 of its
        # 284 MB). The driver loads only the cubin for the GPU it runs on, so
        # the others are zeroed (the ELF keeps its layout; zeros compress to
        # nothing): the tarball drops from ~6 parts to ~2.
        say "keeping only the sm_$arch kernels"
        python3 - "$arch" "$stage"/ort/*.so* <<'EOF'
import struct, sys


def prune(path, keep):
    """Zero the cubins for other GPU architectures in an ELF's .nv_fatbin."""
    with open(path, "r+b") as f:
        elf = bytearray(f.read())
        shoff, = struct.unpack_from("<Q", elf, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

        def sec(i):
            name, _, _, _, off, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
            return name, off, size

        stroff = sec(shstrndx)[1]
        fat = None
        for i in range(shnum):
            name, off, size = sec(i)
            if elf[stroff + name:stroff + name + 11] == b".nv_fatbin\0":
                fat = (off, size)
        if fat is None:
            return 0, 0
        p, end = fat[0], fat[0] + fat[1]
        zeroed = kept = 0
        while p + 16 <= end:
            magic, _, hsize, fsize = struct.unpack_from("<IHHQ", elf, p)
            if magic != 0xBA55ED50:
                p += 8  # fatbins are 8-byte aligned, with padding between them
                continue
            entries, q = [], p + hsize
            while q < p + hsize + fsize:
                kind, _, ehs, psize = struct.unpack_from("<HHIQ", elf, q)
                arch, = struct.unpack_from("<I", elf, q + 28)
                entries.append((kind, arch, q + ehs, psize))
                q += ehs + psize
            # Only where this fatbin has a cubin for the kept architecture:
            # kernels built for other ones alone stay as they were.
            if any(kind == 2 and arch == keep for kind, arch, _, _ in entries):
                for kind, arch, start, psize in entries:
                    if arch != keep:
                        elf[start:start + psize] = bytes(psize)
                        zeroed += psize
                    else:
                        kept += psize
            p += hsize + fsize
        f.seek(0)
        f.write(elf)
        return zeroed, kept


keep = int(sys.argv[1])
for path in sys.argv[2:]:
    z, k = prune(path, keep)
    if z or k:
        print(f"  {path}: zeroed {z / 1e6:.1f} MB of other GPUs' cubins, kept {k / 1e6:.1f} MB for sm_{keep}")
EOF
    fi
    # The CUDA provider names libcurand.so.10 as a dependency but uses none of
    # its symbols (checked with readelf), and the device's torch does not ship
    # curand (77 MB): an empty library of that name satisfies the loader. It
    # goes last on LD_LIBRARY_PATH, so a real one, where present, wins.
    say "empty libcurand.so.10 stand-in"
    cc -shared -fPIC -Wl,-soname,libcurand.so.10 -o "$stage/fallback/libcurand.so.10" -x c /dev/null
    local bin=${SYNTHD_BIN:-target/release/synthd}
    if [ -x "$bin" ]; then
        cp "$bin" "$stage/bin/synthd"
        strip "$stage/bin/synthd" 2>/dev/null || true
        say "synthd from $bin included"
    else
        echo "warning: no $bin (cargo build --release first): the device run then needs SYNTHD_BIN"
    fi
    # xz, not zstd: the device's python can always unpack it (lzma is in the
    # standard library) while a zstd program there is not certain.
    say "xz -9 (a few minutes)"
    tar -C "$stage" -cf - . | xz -9 -T2 > "$wd/$tarball"
    rm -rf "$parts_dir"
    mkdir -p "$parts_dir"
    (cd "$parts_dir" && split -b "${part_mib}M" -d -a 2 "$wd/$tarball" "$tarball.part")
    # Each part in its own folder, one folder carried per device call; every
    # folder has the checksum list, so each call reports what is still missing.
    local sums n=0 p
    sums=$(cd "$parts_dir" && sha256sum "$tarball".part*)
    for p in "$parts_dir/$tarball".part*; do
        n=$((n + 1))
        mkdir -p "$parts_dir/$n"
        mv "$p" "$parts_dir/$n/"
        echo "$sums" > "$parts_dir/$n/SHA256SUMS"
    done
    ls -l "$wd/$tarball"
    say "$n device calls; carry one folder each:"
    local i
    for i in $(seq 1 "$n"); do
        if [ "$i" -lt "$n" ]; then
            echo "  call $i: carry [\"$parts_dir/$i\"]  command: scripts/gpu-check.sh receive"
        else
            echo "  call $i: carry [\"$parts_dir/$i\"]  command: scripts/gpu-check.sh run"
        fi
    done
}

# receive (device): keep the parts that came with this call in /tmp, which a
# warm machine keeps between calls; report what is still missing.
receive() {
    mkdir -p "$recv_dir"
    local f got=0
    for f in "$parts_dir"/*/*; do
        [ -f "$f" ] || continue
        cp "$f" "$recv_dir/"
        [ "$(basename "$f")" = SHA256SUMS ] || got=$((got + 1))
    done
    say "received $got part(s) into $recv_dir"
    if [ ! -f "$recv_dir/SHA256SUMS" ]; then
        echo "missing: all (no SHA256SUMS yet; carry one of .gpu-parts/N)"
        return 1
    fi
    local name missing=0
    while read -r _ name; do
        if [ -f "$recv_dir/$name" ]; then echo "  have $name"; else echo "  MISSING $name"; missing=1; fi
    done < "$recv_dir/SHA256SUMS"
    return $missing
}

# unpack (device): check the parts, join and unpack them, and point synthd at
# the libraries: onnxruntime's, then the NVIDIA ones of the device's torch.
unpack() {
    receive || { echo "error: parts missing; a cold machine lost /tmp: send every part again"; exit 1; }
    (cd "$recv_dir" && sha256sum -c --quiet SHA256SUMS) || { echo "error: a part is damaged"; exit 1; }
    say "unpacking into $unpack_dir"
    rm -rf "$unpack_dir"
    mkdir -p "$unpack_dir"
    if command -v xz >/dev/null; then
        cat "$recv_dir/$tarball".part* | xz -d | tar -C "$unpack_dir" -xf - || exit 1
    else
        cat "$recv_dir/$tarball".part* | python3 -c 'import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode="r|xz").extractall(sys.argv[1])' "$unpack_dir" || exit 1
    fi
    ORT_DYLIB_PATH=$(ls "$unpack_dir"/ort/libonnxruntime.so.* | sort | tail -n 1)
    export ORT_DYLIB_PATH
    local libs=$unpack_dir/ort d py=${PYTHON:-python3}
    # torch's CUDA wheels put cuBLAS, the CUDA runtime, cuDNN, ... under
    # site-packages/nvidia/*/lib (cu13/lib for CUDA 13).
    for d in $("$py" -c 'import site, sysconfig; print("\n".join(site.getsitepackages() + [sysconfig.get_paths()["purelib"]]))' 2>/dev/null | sort -u); do
        for lib in "$d"/nvidia/*/lib "$d"/nvidia/*/*/lib "$d"/tensorrt_libs; do
            [ -d "$lib" ] && libs="$libs:$lib"
        done
    done
    # A CUDA toolkit installed outside Python, where there is one.
    for lib in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
        [ -d "$lib" ] && libs="$libs:$lib"
    done
    libs="$libs:$unpack_dir/fallback"
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    say "ORT_DYLIB_PATH=$ORT_DYLIB_PATH"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    if [ -z "${SYNTHD_BIN:-}" ] && [ -x "$unpack_dir/bin/synthd" ]; then
        SYNTHD_BIN=$unpack_dir/bin/synthd
    fi
    # What the CUDA provider still cannot find, named before synthd tries.
    ldd "$unpack_dir/ort/libonnxruntime_providers_cuda.so" | grep 'not found' | sed 's/^/  cuda provider: /' || true
}

# The online path: a venv with onnxruntime-gpu and the NVIDIA wheels from PyPI.
online_install() {
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
}

case $mode in
    prepare)
        prepare
        exit 0
        ;;
    receive)
        receive
        exit 0  # parts still to come are the normal case here
        ;;
esac

say "GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi not available"
if [ "$mode" = run ]; then
    unpack
else
    online_install
fi

bin=${SYNTHD_BIN:-}
if [ -z "$bin" ]; then
    if [ -x target/release/synthd ]; then
        bin=target/release/synthd
    elif [ "$mode" = run ] && ! command -v cargo >/dev/null; then
        echo "error: no synthd: build it here (cargo build --release) before prepare, or carry one and set SYNTHD_BIN"
        exit 1
    else
        say "cargo build --release"
        cargo build --release --quiet --bin synthd || exit 1
        bin=target/release/synthd
    fi
fi

if [ "$mode" = run ]; then
    # Built on another machine: name a shared library it cannot find here.
    ldd "$bin" 2>&1 | grep -E 'not found|version .* not found' | sed 's/^/  synthd: /' || true
fi
say "synthd doctor ($bin)"
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
        t=$(limit)
        if [ "$t" -lt 20 ]; then results+=("$provider pass $pass: SKIPPED (time)"); continue; fi
        say "bench $provider (pass $pass)"
        out=$(timeout "$t" "$bin" bench --pipeline "$file" --provider "$provider" --steps "$steps" --batch "$batch" \
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
t=$(limit)
[ "$t" -lt 20 ] && t=1  # no time left: fails at once, reported as FAILED
out=$(timeout "$t" "$bin" bench --pipeline "$pipeline" --provider cuda --steps "$steps" --batch "$batch" --lanes 2 \
    --cache-dir "$cache" 2>&1)
echo "$out" | grep -v '^step ' | sed 's/^/  /'
json=$(echo "$out" | tail -n 1)
case "$json" in "{"*) results+=("cuda 2 lanes: $json") ;; *) results+=("cuda 2 lanes: FAILED") ;; esac

say "figures"
printf '%s\n' "${results[@]}"
