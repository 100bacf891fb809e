#!/usr/bin/env bash
# The main job on the bundled demo: de-identify the demo MR study, inpaint
# generated lesion-sized regions with the demo diffusion model, and write the
# synthetic series, its SEG, previews and manifest to demo-output/.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

scripts/setup.sh
echo "== building synthd (release)"
cargo build --release --quiet
synthd="$root/target/release/synthd"

mkdir -p .demo
[ -f .demo/synthd.key ] || "$synthd" keygen .demo/synthd.key >/dev/null
rm -rf demo-output
export ORT_DYLIB_PATH="$root/.bootstrap/onnxruntime/libonnxruntime.so"
"$synthd" process \
  --pipeline pipelines/brain-mri-inpaint.toml \
  --input fixtures/dicom/demo \
  --output demo-output \
  --key-file .demo/synthd.key
preview=$(find demo-output -name preview.png | head -1)
echo "Look at the result: $preview (source | mask | synthetic)"
