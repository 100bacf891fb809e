#!/usr/bin/env bash
# Continue training the demo model (fixtures/models/train) on a lent GPU
# machine that has python3.12 + torch (CUDA), numpy, scipy, onnx,
# onnxruntime (CPU) and opencv, but no network and none of nibabel, nilearn
# or diffusers. Two halves:
#
#   scripts/gpu-train.sh prepare   here, with the network: downloads the
#                                  missing wheels into .whl/ (ignored by git,
#                                  ~25 MiB, so a device call can carry it)
#   scripts/gpu-train.sh run       on the device, in the repository root, with
#                                  carry [".whl"]: trains from the committed
#                                  checkpoint, exports, evaluates, into $OUT
#
# The exact device call is in docs/gpu.md. `run` keeps under ~9 minutes (one
# device command may run 10) and writes each result to $OUT as soon as it
# exists, so a cut-off run still returns the log and the last checkpoint.
#
# run's knobs (environment): TRAIN_MINUTES (6), BATCH (64), LR (1e-3),
# DEVICE (cuda), WORKERS (batch-making processes; nproc - 2), THREADS (torch
# threads of the training process; 4), RUN_SECONDS (540: the whole run's
# wall-clock budget), MASK_BANK / LESION_BANK (1200 each), PYTHON (python3),
# WHEELS (.whl), INIT (fixtures/models/train/checkpoint.pt), OUT (required).
# prepare's: PYVER (3.12: the device's python).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
train_dir=fixtures/models/train

# Pinned to the versions of fixtures/models/train/requirements.txt and of the
# venv the model was trained in. Beyond nibabel/nilearn/diffusers these are
# what `from diffusers import DDIMScheduler` imports (huggingface_hub with its
# HTTP stack, PIL, regex, safetensors, ...) that torch/onnx/onnxruntime do not
# bring; `run` skips any the device already has, so a spare one costs nothing.
WHEEL_SPECS=(
    nibabel==5.4.2 nilearn==0.14.1 diffusers==0.42.1
    importlib_metadata==10.2.0 zipp==4.1.2 lazy-importer==0.1.0
    huggingface_hub==2.4.0 httpx2==2.17.0 httpcore2==2.17.0 h11==0.16.0 anyio==4.16.0 truststore==0.10.5
    click==8.5.1 tqdm==4.70.1 pyyaml==6.0.4
    requests==2.34.2 charset_normalizer==3.5.3 idna==3.21 urllib3==2.8.0 certifi==2026.10.19.post1
    pillow==13.0.0 regex==2026.12.2 safetensors==0.8.0 packaging==26.4
)

prepare() {
    local pyver=${PYVER:-3.12} dest=.whl
    # Ignored through the repository's own exclude file, not .gitignore: the
    # wheels must never be committed, and a device call ships ignored paths
    # only when `carry` names them.
    local exclude
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
    rm -rf "$dest"
    mkdir -p "$dest"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version "$pyver" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$dest" "${WHEEL_SPECS[@]}"
    # nilearn is only the MNI152 template's home (common.mni_t1_path and
    # anatomy._data_path read three .nii.gz files beside nilearn/__init__.py);
    # its 11.5 MB wheel becomes a 5 MB one with just those files, so the
    # whole folder stays well under what one device call can carry.
    python3 - "$dest"/nilearn-*.whl <<'EOF'
import base64, hashlib, sys, zipfile

path = sys.argv[1]
keep_data = ("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
             "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
             "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")
src = zipfile.ZipFile(path)
names = [n for n in src.namelist()
         if n in ("nilearn/__init__.py", "nilearn/_version.py")
         or n in ("nilearn/datasets/data/" + d for d in keep_data)
         or (".dist-info/" in n and not n.endswith("/RECORD"))]
record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
blobs = {n: src.read(n) for n in names}
src.close()
rows = []
for n, b in blobs.items():
    h = base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()
    rows.append(f"{n},sha256={h},{len(b)}")
rows.append(f"{record_name},,")
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
    for n, b in blobs.items():
        out.writestr(n, b)
    out.writestr(record_name, "\n".join(rows) + "\n")
print(f"nilearn wheel cut to {len(blobs)} files")
EOF
    du -sh "$dest"
    # A device call carries at most 64 MiB together with the tracked tree.
    local bytes tracked
    bytes=$(du -sb "$dest" | cut -f1)
    tracked=$(git ls-files -z | xargs -0 stat -c %s | awk '{ s += $1 } END { print s }')
    if [ $((bytes + tracked)) -gt $((63 * 1024 * 1024)) ]; then
        echo "error: $dest ($bytes bytes) and the tracked tree ($tracked) exceed what one device call carries"
        exit 1
    fi
    echo "ready: device call with carry [\".whl\"] and command 'scripts/gpu-train.sh run' (docs/gpu.md)"
}

run() {
    : "${OUT:?OUT must name the folder whose files come back}"
    mkdir -p "$OUT"
    # Everything goes to the log in $OUT as it happens: if the call is cut
    # off, what was printed so far still comes back.
    run_steps 2>&1 | tee -a "$OUT/gpu-train.log"
}

run_steps() {
    local started budget py
    started=$(date +%s)
    budget=${RUN_SECONDS:-540}
    py=${PYTHON:-python3}
    left() { echo $((budget - ($(date +%s) - started))); }
    say() { echo "== [$(($(date +%s) - started))s] $*"; }

    say "machine"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi not available"
    echo "cpus: $(nproc), python: $("$py" -V 2>&1)"

    # The device has no network: the wheels that `prepare` put in .whl/
    # (carried) are installed into /tmp/site, outside the shipped checkout.
    # Skipped where the imports already work (a warm machine that installed
    # them a call ago, or a PYTHON that has them, as in a CPU rehearsal).
    local wheels=${WHEELS:-.whl} site=/tmp/site
    local probe='import nibabel, nilearn, diffusers'
    if "$py" -c "$probe" 2>/dev/null; then
        say "nibabel, nilearn, diffusers already importable"
    elif PYTHONPATH=$site "$py" -c "$probe" 2>/dev/null; then
        export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
        say "using $site from an earlier call"
    else
        ls "$wheels"/*.whl >/dev/null 2>&1 || { echo "error: no wheels in $wheels: run 'scripts/gpu-train.sh prepare' here and carry .whl"; exit 1; }
        # Only the distributions the interpreter lacks: a second copy of one it
        # has (packaging, say) on PYTHONPATH would shadow the tested one.
        local missing
        missing=$("$py" - "$wheels"/*.whl <<'EOF'
import importlib.metadata as md, os, sys
for w in sys.argv[1:]:
    name = os.path.basename(w).split("-")[0]
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(w)
EOF
)
        say "installing into $site: $(echo "$missing" | xargs -n1 basename 2>/dev/null | cut -d- -f1 | tr '\n' ' ')"
        mkdir -p "$site"
        if "$py" -m pip --version >/dev/null 2>&1; then
            # shellcheck disable=SC2086 # one wheel path per word
            PIP_ROOT_USER_ACTION=ignore timeout 120 "$py" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
                --target "$site" $missing
        else
            # No pip: a wheel is a zip laid out as site-packages wants it.
            for w in $missing; do timeout 60 "$py" -m zipfile -e "$w" "$site"; done
        fi
        export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
        "$py" -c "$probe" || { echo "error: imports still fail after installing the wheels"; exit 1; }
    fi

    local device=${DEVICE:-cuda}
    if [ "$device" = cuda ] && ! "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
        echo "error: torch sees no CUDA device (DEVICE=cpu to rehearse on a CPU)"
        exit 1
    fi
    local workers=${WORKERS:-$(($(nproc) > 2 ? $(nproc) - 2 : 0))}
    local minutes=${TRAIN_MINUTES:-6}
    local work=/tmp/train
    rm -rf "$work"
    mkdir -p "$work"

    # Budget: what is left after training goes to stripping + export (~30 s)
    # and the quick evaluation. The training's own --time-budget-minutes
    # starts after its data set-up (~1 min), so the hard timeout gives it
    # slack but always leaves 90 s for export; checkpoints every minute keep
    # a kill from losing more than a minute.
    local train_limit
    train_limit=$(left)
    train_limit=$((train_limit - 90))
    [ "$train_limit" -gt 60 ] || { echo "error: only ${train_limit}s left for training"; exit 1; }
    say "train: $minutes min on $device, batch ${BATCH:-64}, lr ${LR:-1e-3}, $workers workers (hard limit ${train_limit}s)"
    local rc=0
    timeout -k 10 "$train_limit" "$py" -u "$train_dir/train.py" \
        --init "${INIT:-$train_dir/checkpoint.pt}" --out "$work" \
        --time-budget-minutes "$minutes" --batch "${BATCH:-64}" --lr "${LR:-1e-3}" \
        --device "$device" --workers "$workers" --threads "${THREADS:-$(($(nproc) < 4 ? $(nproc) : 4))}" --ckpt-every-minutes 1 \
        --mask-bank "${MASK_BANK:-1200}" --lesion-bank "${LESION_BANK:-1200}" \
        "@$train_dir/recipe.args" || rc=$?
    [ "$rc" = 0 ] || say "train.py ended with status $rc (124: hit the hard limit); using its last checkpoint"
    cp "$work/loss.jsonl" "$OUT/" 2>/dev/null || true
    [ -f "$work/last.pt" ] || { echo "error: no checkpoint written"; exit 1; }

    # The committed checkpoint carries weights + EMA but no optimizer state
    # (a third of the size); the returned one is made the same way so it can
    # replace fixtures/models/train/checkpoint.pt as it is.
    say "checkpoint.pt (optimizer state stripped)"
    timeout 60 "$py" - "$work/last.pt" "$OUT/checkpoint.pt" <<'EOF'
import sys, torch
st = torch.load(sys.argv[1], map_location="cpu")
st.pop("opt", None)
torch.save(st, sys.argv[2])
print(f"iter {st['iter']}, {st['elapsed_s'] / 3600:.2f} h of training in all")
EOF
    ls -l "$OUT/checkpoint.pt"

    say "export"
    timeout 90 "$py" "$train_dir/export.py" --ckpt "$OUT/checkpoint.pt" --outdir "$OUT" \
        || { echo "error: export failed"; exit 1; }

    local eval_limit
    eval_limit=$(($(left) - 5))
    if [ "$eval_limit" -lt 30 ]; then
        say "no time left for evaluate.py --quick"
        return 0
    fi
    say "evaluate.py --quick (limit ${eval_limit}s)"
    SYNTHD_EVAL_THREADS=${EVAL_THREADS:-$(nproc)} timeout -k 5 "$eval_limit" "$py" -u "$train_dir/evaluate.py" \
        --onnx "$OUT/brain-inpaint-96.onnx" --quick > "$OUT/evaluate-quick.txt" 2>&1 \
        || say "evaluate.py did not finish (status $?); partial output in evaluate-quick.txt"
    cat "$OUT/evaluate-quick.txt"
    say "done; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
}

case ${1:-} in
    prepare) prepare ;;
    run) run ;;
    *)
        echo "usage: scripts/gpu-train.sh prepare|run   (see the comment at the top, and docs/gpu.md)"
        exit 2
        ;;
esac
