#!/usr/bin/env bash
# Installs what synthd's demo and tests need on a fresh Debian machine:
# Debian's DICOM tools, a project Python venv with pinned packages, and the
# pinned ONNX Runtime library. Idempotent: a second run installs nothing.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# dcmtk (dcmdump, storescu, storescp), dicom3tools (dciodvfy), gdcm (gdcmdump,
# gdcmanon), systemd (systemd-analyze), orthanc and curl (the PACS the network tests talk to, and its REST API),
# chromium (the status page test loads it headless), prometheus (its promtool
# checks /metrics and deploy/prometheus/ rules; the server it brings is not used),
# Slurm and munge (tests/slurm_cluster.rs runs deploy/slurm/ on a one-node cluster).
packages=(dcmtk dicom3tools libgdcm-tools systemd python3-venv orthanc curl chromium prometheus
  slurmctld slurmd slurm-client munge)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    # Only promtool is wanted: the package's server must not keep running here.
    "${sudo_cmd[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
fi

# The project venv: pydicom (its bundled test files and a second reader),
# numpy, onnx (builds the tiny test model). Never torch: that is only for
# training the demo model (fixtures/models/train).
if [ ! -x .venv/bin/python ] || ! cmp -s scripts/requirements-test.txt .venv/.requirements; then
  echo "setup: creating .venv with scripts/requirements-test.txt"
  python3 -m venv .venv
  # `python -m pip`, not .venv/bin/pip: a venv copied from another checkout
  # keeps pip scripts whose #! names the other venv, so they install there.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
  cp scripts/requirements-test.txt .venv/.requirements
fi

scripts/bootstrap-onnxruntime.sh
