#!/usr/bin/env bash
# De-identification throughput, side by side in one run: synthd deid,
# dicom-anonymizer (PyPI), gdcmanon (Debian libgdcm-tools) and plain cp as the
# I/O ceiling, on pydicom's test files and on a generated 1,000-instance MR
# series. Prints files/s, MB/s (median of REPEAT=3 round-robin runs), the
# same until the output is synced to disk, peak RSS, and files/s of each
# tool's fastest run (a short run on a shared VM is often slowed by
# others; the fastest is the least disturbed). Not a test: figures
# vary by machine. On ext4 without a journal, start it at least six minutes
# after many files were deleted (another benchmark's scratch, for one): inode
# allocation then steps over every recently deleted inode, a cost per file
# created that halves the ratios of a fast tool to a slow one.
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

# One timed run of TOOL on DATASET; appends "seconds durable_seconds rss_kib"
# to $work/times/TOOL.DATASET.
run_once() {
  local tool=$1 dataset=$2 start end synced
  # Earlier outputs are moved aside, not deleted: on ext4 without a journal
  # (this VM's disk) inode allocation steps over every inode deleted in the
  # last 5 minutes, which would bill each tool for the previous run's rm.
  for previous in out out-quarantine; do
    [ -e "$work/$previous" ] && mv "$work/$previous" "$work/spent/$previous.$((spent += 1))"
  done
  mkdir -p "$work/out"
  sync
  start=$(date +%s.%N)
  case $tool in
    cp) /usr/bin/time -f "%M" -o "$work/rss" cp -r "$work/$dataset/." "$work/out/" >/dev/null 2>&1 || true ;;
    synthd) /usr/bin/time -f "%M" -o "$work/rss" "$synthd" deid "$work/$dataset" --output "$work/out" \
      --key-file "$work/site.key" --jobs 2 >/dev/null 2>&1 || true ;;
    gdcmanon) /usr/bin/time -f "%M" -o "$work/rss" gdcmanon -e -r --continue -c "$work/cert.pem" \
      -i "$work/$dataset" -o "$work/out" >/dev/null 2>&1 || true ;;
    dicom-anonymizer) /usr/bin/time -f "%M" -o "$work/rss" "$venv/bin/dicom-anonymizer" "$work/$dataset" \
      "$work/out" >/dev/null 2>&1 || true ;;
  esac
  end=$(date +%s.%N)
  # synthd deid returns only once its outputs are on disk (one syncfs);
  # the others leave that to the kernel. "durable" adds the same sync to
  # every tool, so that column compares like with like.
  sync -f "$work/out"
  synced=$(date +%s.%N)
  echo "$(echo "$end - $start" | bc -l) $(echo "$synced - $start" | bc -l) $(tail -1 "$work/rss")" \
    >>"$work/times/$tool.$dataset"
}

report() { # tool dataset label
  local tool=$1 dataset=$2 label=$3 seconds best durable rss files bytes
  seconds=$(cut -d' ' -f1 "$work/times/$tool.$dataset" | median)
  best=$(cut -d' ' -f1 "$work/times/$tool.$dataset" | sort -g | head -1)
  durable=$(cut -d' ' -f2 "$work/times/$tool.$dataset" | median)
  rss=$(cut -d' ' -f3 "$work/times/$tool.$dataset" | sort -g | tail -1)
  files=$(find "$work/$dataset" -type f | wc -l)
  bytes=$(du -sb "$work/$dataset" | cut -f1)
  awk -v n="$label" -v d="$dataset" -v f="$files" -v b="$bytes" -v t="$seconds" -v u="$durable" -v r="$rss" -v m="$best" \
    'BEGIN { printf "%-18s %-8s %6d %8.1f %8.3f %9.1f %8.1f %9.1f %8.1f %8.1f %9.1f\n", n, d, f, b/1048576, t, f/t, b/1048576/t, f/u, b/1048576/u, r/1024, f/m }'
}

largest=$(find "$work/pydicom" "$work/series" -type f -printf "%s\n" | sort -n | tail -1)
awk -v b="$largest" 'BEGIN { printf "largest input file: %.1f MB\n", b/1048576 }' 
echo "files/s and MB/s: until the tool exits; durable: until its output is also synced to disk"
printf "%-18s %-8s %6s %8s %8s %9s %8s %9s %8s %8s %9s\n" tool dataset files MB seconds files/s MB/s durable/s dMB/s peakMB best/s
mkdir -p "$work/times"
# Round robin: every repeat runs each tool once, so a noisy spell on a shared
# machine lands on all of them rather than on whichever ran then.
tools="cp synthd gdcmanon dicom-anonymizer"
for dataset in pydicom series; do
  for run in $(seq 1 "$repeat"); do
    for tool in $tools; do run_once "$tool" "$dataset"; done
  done
  for tool in $tools; do
    report "$tool" "$dataset" "$([ "$tool" = synthd ] && echo "synthd deid" || echo "$tool")"
  done
done
awk -v r="$repeat" 'BEGIN { printf "(median of %d round-robin runs; peak RSS over all; best/s: files/s of the fastest run)\n", r }'

