#!/usr/bin/env bash
# De-identification throughput, side by side in one run: synthd deid,
# dicom-anonymizer (PyPI), gdcmanon (Debian libgdcm-tools) and plain cp as the
# I/O ceiling, on pydicom's test files and on a generated 1,000-instance MR
# series. Prints files/s, MB/s (median of REPEAT=3 runs), the same until the
# output is synced to disk, and peak RSS. Not a test: figures vary by machine.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/setup.sh >/dev/null
cargo build --release --quiet
synthd="$root/target/release/synthd"

venv="$root/.bootstrap/bench-venv"
if [ ! -x "$venv/bin/dicom-anonymizer" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check dicom-anonymizer==2.1.0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/pydicom" "$work/series" "$work/spent"
spent=0
testfiles=$(.venv/bin/python -c "import pydicom.data, os; print(os.path.join(os.path.dirname(pydicom.data.__file__), 'test_files'))")
# Only the files every tool can parse are fair game: keep those dcmdump reads.
for f in "$testfiles"/*.dcm; do dcmdump -q "$f" >/dev/null 2>&1 && cp "$f" "$work/pydicom/"; done
.venv/bin/python fixtures/deid/make_series.py 1000 "$work/series"
"$synthd" keygen "$work/site.key" >/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -subj "/CN=synthd-bench" -days 1 \
  -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1

repeat=${REPEAT:-3}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

measure() { # name dataset command...   (median of REPEAT runs, peak RSS of all)
  local name=$1 dataset=$2; shift 2
  local times=() durable_times=() rss=0 run start end synced
  for run in $(seq 1 "$repeat"); do
    # Earlier outputs are moved aside, not deleted: on ext4 without a journal
    # (this VM's disk) inode allocation steps over every inode deleted in the
    # last 5 minutes, which would bill each tool for the previous run's rm.
    for previous in out out-quarantine; do
      [ -e "$work/$previous" ] && mv "$work/$previous" "$work/spent/$previous.$((spent += 1))"
    done
    mkdir -p "$work/out"
    sync
    start=$(date +%s.%N)
    /usr/bin/time -f "%M" -o "$work/rss" "$@" >/dev/null 2>&1 || true
    end=$(date +%s.%N)
    # synthd deid returns only once its outputs are on disk (one syncfs);
    # the others leave that to the kernel. "durable" adds the same sync to
    # every tool, so that column compares like with like.
    sync -f "$work/out"
    synced=$(date +%s.%N)
    times+=("$(echo "$end - $start" | bc -l)")
    durable_times+=("$(echo "$synced - $start" | bc -l)")
    rss=$(( $(tail -1 "$work/rss") > rss ? $(tail -1 "$work/rss") : rss ))
  done
  local seconds durable files bytes
  seconds=$(printf '%s\n' "${times[@]}" | median)
  durable=$(printf '%s\n' "${durable_times[@]}" | median)
  files=$(find "$work/$dataset" -type f | wc -l)
  bytes=$(du -sb "$work/$dataset" | cut -f1)
  awk -v n="$name" -v d="$dataset" -v f="$files" -v b="$bytes" -v t="$seconds" -v u="$durable" -v r="$rss" \
    'BEGIN { printf "%-18s %-8s %6d %8.1f %8.3f %9.1f %8.1f %9.1f %8.1f %8.1f\n", n, d, f, b/1048576, t, f/t, b/1048576/t, f/u, b/1048576/u, r/1024 }'
}

largest=$(find "$work/pydicom" "$work/series" -type f -printf "%s\n" | sort -n | tail -1)
awk -v b="$largest" 'BEGIN { printf "largest input file: %.1f MB\n", b/1048576 }' 
echo "files/s and MB/s: until the tool exits; durable: until its output is also synced to disk"
printf "%-18s %-8s %6s %8s %8s %9s %8s %9s %8s %8s\n" tool dataset files MB seconds files/s MB/s durable/s dMB/s peakMB
for dataset in pydicom series; do
  measure "cp" "$dataset" cp -r "$work/$dataset/." "$work/out/"
  measure "synthd deid" "$dataset" "$synthd" deid "$work/$dataset" --output "$work/out" --key-file "$work/site.key" --jobs 2
  measure "gdcmanon" "$dataset" gdcmanon -e -r --continue -c "$work/cert.pem" -i "$work/$dataset" -o "$work/out"
  measure "dicom-anonymizer" "$dataset" "$venv/bin/dicom-anonymizer" "$work/$dataset" "$work/out"
done
