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
# Both tasks of the multitask model (issue 15): add a generated lesion with
# its components to every sequence of the study, and replace the lesion of
# the study's SEG with healthy tissue. They need a model with label planes and
# task/sequence slots; `synthd validate` says whether the demo model has them.
for pipeline in brain-lesion-add brain-lesion-remove; do
  if "$synthd" validate "pipelines/$pipeline.toml" >/dev/null 2>&1; then
    "$synthd" process \
      --pipeline "pipelines/$pipeline.toml" \
      --input fixtures/dicom/demo \
      --output "demo-output/$pipeline" \
      --key-file .demo/synthd.key ||
      echo "$pipeline: something was quarantined; see demo-output/$pipeline-quarantine/*/reason.json"
  else
    echo "skipped $pipeline: the demo model has no label planes or task/sequence slots yet" \
      "(see \`synthd validate pipelines/$pipeline.toml\`)"
  fi
done
echo "Look at the results (source | mask | synthetic, QC numbers underneath):"
find demo-output -name preview.png | sort | sed 's/^/  /'
