#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then checks
# formatting, lints with warnings as errors, and runs unit and integration tests.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

scripts/setup.sh

export SYNTHD_PYTHON="$root/.venv/bin/python"
export ORT_DYLIB_PATH="$root/.bootstrap/onnxruntime/libonnxruntime.so"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --all-targets -- --test-threads 2
