#!/usr/bin/env bash
# The main job on the bundled demo: de-identify the demo MR study (T1 and
# FLAIR with a tumour, and its SEG), then with the demo multitask diffusion
# model: inpaint generated regions with healthy tissue, add a generated
# multi-component lesion, and remove the SEG's lesion; write the synthetic
# series, their SEGs, previews (with QC numbers) and manifests to demo-output/.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

scripts/setup.sh
# Not --quiet: the first release build takes minutes (about five on two
# cores), and cargo's per-crate lines show it is moving.
echo "== building synthd (release; the first build takes a few minutes)"
cargo build --release
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
# Both tasks of the multitask model: add a generated lesion with its
# components to every sequence of the study (T1 and FLAIR show the same
# lesion), and replace the lesion of the study's SEG with healthy tissue.
for pipeline in brain-lesion-add brain-lesion-remove; do
  "$synthd" process \
    --pipeline "pipelines/$pipeline.toml" \
    --input fixtures/dicom/demo \
    --output "demo-output/$pipeline" \
    --key-file .demo/synthd.key ||
    echo "$pipeline: something was quarantined; see demo-output/$pipeline-quarantine/*/reason.json"
done
echo "Look at the results (source | mask | synthetic, QC numbers underneath):"
find demo-output -name preview.png | sort | sed 's/^/  /'
