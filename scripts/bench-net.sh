#!/usr/bin/env bash
# DICOM network benchmark (a benchmark, not a test: it prints figures,
# asserts nothing). On loopback, with 1,000 small MR instances (64x64,
# about 9 KB, made by fixtures/daemon/make_mr.py), REPEAT times each
# (default 3; medians reported, every run listed):
#   - receive: dcmtk `storescu` sends all files on one association to
#     (a) dcmtk's own `storescp` writing into a folder, and (b) `synthd run`
#     with [dicom.listen], both writing to the same disk; instances/s and the
#     ratio synthd/storescp. storescp does not fsync; synthd answers Success
#     only once each file (and its folder entry) is fsynced. synthd's daemon
#     runs with stable_age 1h, so its intake records and moves the files but
#     de-identification does not compete for the CPUs during the clock.
#   - send: `synthd run` de-identifies the same study and sends the outputs
#     to a local Orthanc ([[destinations]]); instances/s from the queueing of
#     the outputs to the last acknowledged instance, and, for reference,
#     `storescu` sending the originals to the same Orthanc.
#
# Usage: scripts/bench-net.sh   (release build; REPEAT=3, COUNT=1000;
#        SYNTHD_BIN=path overrides the binary; KEEP_SCRATCH=1 keeps files)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python=${SYNTHD_PYTHON:-$root/.venv/bin/python}
repeat=${REPEAT:-3}
count=${COUNT:-1000}

if [ -z "${SYNTHD_BIN:-}" ]; then
  cargo build --release --quiet
fi
bin=${SYNTHD_BIN:-$root/target/release/synthd}
scratch=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP_SCRATCH:-}" ]; then echo "scratch kept: $scratch" >&2; else rm -rf "$scratch"; fi
}
trap cleanup EXIT

now() { date +%s.%N; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on port $1" >&2; return 1; }
count_files() { find "$1" -type f -name "${2:-*}" 2>/dev/null | wc -l; }

"$python" fixtures/daemon/make_mr.py "$scratch/src" 1 "$count" 64 >/dev/null
src=$scratch/src/s001
echo "bench-net: $count MR instances of $(du -sk "$src" | cut -f1) KiB in total; loopback; $(nproc) CPUs"

# storescu sends the whole folder on one association; prints seconds.
send_with_storescu() {
  local port=$1 called=$2 t0 t1
  sync
  t0=$(now)
  storescu -aet BENCH -aec "$called" +sd 127.0.0.1 "$port" "$src" >/dev/null 2>&1
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}

run_storescp() {
  local run=$1 port out pid seconds
  port=$(free_port)
  out=$scratch/storescp-$run
  mkdir -p "$out"
  storescp -aet STORESCP -od "$out" "$port" >/dev/null 2>&1 &
  pid=$!
  pids+=("$pid")
  wait_port "$port"
  seconds=$(send_with_storescu "$port" STORESCP)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  [ "$(count_files "$out")" -eq "$count" ] || echo "storescp kept $(count_files "$out") of $count" >&2
  echo "$seconds"
}

# A synthd layout with [dicom.listen] on PORT allowing BENCH (and ORTHANC).
make_layout() {
  local layout=$1 port=$2 stable_age=$3
  "$bin" init "$layout" >/dev/null
  sed -i -e "s/stable_age = \"60s\"/stable_age = \"$stable_age\"/" \
    -e 's/settle = "2s"/settle = "200ms"/' \
    -e 's/min_free_space = "512MiB"/min_free_space = "1MiB"/' \
    -e 's/summary_interval = "5m"/summary_interval = "1h"/' "$layout/synthd.toml"
  cat >> "$layout/synthd.toml" <<EOF

[dicom.listen]
ae_title = "SYNTHD"
port = $port
[[dicom.listen.allow]]
ae_title = "BENCH"
hosts = ["127.0.0.1"]
EOF
}

run_synthd_receive() {
  local run=$1 port layout pid seconds
  port=$(free_port)
  layout=$scratch/synthd-$run
  make_layout "$layout" "$port" 1h
  "$bin" run --allow-root --config "$layout/synthd.toml" 2>"$layout.log" &
  pid=$!
  pids+=("$pid")
  wait_port "$port"
  seconds=$(send_with_storescu "$port" SYNTHD)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local kept
  kept=$(( $(count_files "$layout/inbox" '*.dcm') + $(count_files "$layout/work" '*') ))
  [ "$kept" -ge "$count" ] || echo "synthd kept $kept of $count" >&2
  echo "$seconds"
}

start_orthanc() {
  local dir=$1 http=$2 dicom=$3 synthd_port=$4
  mkdir -p "$dir"
  cat > "$dir/orthanc.json" <<EOF
{ "Name": "bench", "StorageDirectory": "$dir/db", "IndexDirectory": "$dir/db",
  "HttpPort": $http, "DicomPort": $dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false, "Plugins": [], "DicomAlwaysAllowEcho": false,
  "DicomAlwaysAllowStore": false, "DicomCheckModalityHost": true, "DicomAssociationCloseDelay": 0,
  "DicomModalities": { "synthd": ["SYNTHD", "127.0.0.1", $synthd_port], "bench": ["BENCH", "127.0.0.1", 1] } }
EOF
  Orthanc "$dir/orthanc.json" >/dev/null 2>"$dir/orthanc.log" &
  echo $! > "$dir/orthanc.pid"
  pids+=("$!")
  for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$http/system" >/dev/null && return 0; sleep 0.05; done
  echo "Orthanc did not start" >&2
  return 1
}

sent_count() {
  "$bin" status --json --config "$1" 2>/dev/null |
    "$python" -c 'import json, sys; d = json.load(sys.stdin).get("destinations") or []; print(sum(x.get("sent", 0) for x in d))'
}

log_time() { # first log line matching $2 in $1, as epoch seconds
  local line stamp
  line=$(grep -m1 "$2" "$1" || true)
  stamp=$(echo "$line" | grep -oE '[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z' | head -1)
  date -d "$stamp" +%s.%N
}

# prints "synthd_send_s storescu_to_orthanc_s outputs"
run_send() {
  local run=$1 port http dicom layout orthanc pid t1 outputs base
  port=$(free_port); http=$(free_port); dicom=$(free_port)
  orthanc=$scratch/orthanc-$run
  start_orthanc "$orthanc" "$http" "$dicom" "$port"
  local reference
  reference=$(send_with_storescu "$dicom" ORTHANC)
  curl -sf -X DELETE "http://127.0.0.1:$http/studies/$(curl -sf "http://127.0.0.1:$http/studies" | "$python" -c 'import json,sys; print(json.load(sys.stdin)[0])')" >/dev/null
  layout=$scratch/send-$run
  make_layout "$layout" "$port" 1s
  cat >> "$layout/synthd.toml" <<EOF
[[destinations]]
name = "orthanc"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = $dicom
EOF
  sed -i 's/^\[output\]$/[output]\ndestinations = ["orthanc"]/' "$layout"/pipelines/*.toml
  "$bin" run --allow-root --config "$layout/synthd.toml" 2>"$layout.log" &
  pid=$!
  pids+=("$pid")
  wait_port "$port"
  mkdir -p "$layout/inbox/bench"
  cp "$src"/*.dcm "$layout/inbox/bench/"
  while [ "$(sent_count "$layout/synthd.toml")" -lt "$count" ]; do
    grep -q "dead letter" "$layout.log" && { echo "dead letters; see $layout.log" >&2; break; }
    sleep 0.2
  done
  t1=$(now)
  base=$(log_time "$layout.log" "outputs queued for sending")
  outputs=$(sent_count "$layout/synthd.toml")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  # run_send runs in a subshell: the EXIT trap never sees this Orthanc.
  kill "$(cat "$orthanc/orthanc.pid")" 2>/dev/null || true
  echo "$(echo "$t1 - $base" | bc -l) $reference $outputs"
}

storescp_s=(); synthd_s=(); send_s=(); ref_s=()
for run in $(seq 1 "$repeat"); do
  a=$(run_storescp "$run"); b=$(run_synthd_receive "$run")
  read -r c d sent < <(run_send "$run")
  storescp_s+=("$a"); synthd_s+=("$b"); send_s+=("$c"); ref_s+=("$d")
  printf 'run %d: receive storescp %.2fs, synthd %.2fs; send synthd->Orthanc %.2fs (%d sent), storescu->Orthanc %.2fs\n' \
    "$run" "$a" "$b" "$c" "$sent" "$d"
done
rate() { echo "$count / $1" | bc -l; }
m_storescp=$(printf '%s\n' "${storescp_s[@]}" | median)
m_synthd=$(printf '%s\n' "${synthd_s[@]}" | median)
m_send=$(printf '%s\n' "${send_s[@]}" | median)
m_ref=$(printf '%s\n' "${ref_s[@]}" | median)
printf 'receive from storescu: storescp %.0f instances/s, synthd %.0f instances/s, ratio synthd/storescp %.2f\n' \
  "$(rate "$m_storescp")" "$(rate "$m_synthd")" "$(echo "$m_storescp / $m_synthd" | bc -l)"
printf 'send to Orthanc: synthd %.0f instances/s (queue to last ack); storescu %.0f instances/s (reference)\n' \
  "$(rate "$m_send")" "$(rate "$m_ref")"
