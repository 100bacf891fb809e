#!/usr/bin/env bash
# Daemon benchmark (a benchmark, not a test: it prints figures, asserts nothing).
#
# For 1 study of 1,000 instances and 100 studies of 10 (MR with FAKE values,
# made by fixtures/daemon/make_mr.py; 64x64 pixels, the worst case for
# per-file costs, and 256x256, a typical MR matrix), it measures, REPEAT times
# each (default 3; medians reported, every run listed):
#   - `synthd deid` on the same files (baseline, same worker count: WORKERS
#     deid workers and 3 x WORKERS output workers, as `synthd deid --jobs
#     WORKERS` runs 3 writers per worker),
#   - the daemon: files renamed into the inbox at once, then the time from
#     stable_age expiry to the outbox: to the last "study written" (every
#     output durable in the outbox and recorded, which is where `synthd
#     deid`'s time ends too): latency, instances/s over that time
#     (throughput), time to the first output, the daemon's peak RSS, and the
#     time to the last "study finished" (originals also archived, which
#     `synthd deid` does not do).
# Dirty pages from preparing each run are synced before its clock starts,
# so neither side pays for the other's writes.
# The daemon runs with `[metrics]` off and on (METRICS="off on"); with it on,
# /metrics is scraped every 0.1 s (SCRAPE_INTERVAL) from the files' arrival to
# the end (150 times as often as a usual Prometheus, so that scrapes land
# while a sub-second study is worked on; each costs the daemon ~0.15 ms of
# CPU), and the time of each scrape that started between stable_age expiry
# and the last output is kept (connect, request, whole response, from one
# client process); it prints their median and p95, and the ratio of the
# daemon's throughput with metrics on to that with metrics off, per run and
# of the medians, and the ratio of the CPU time the daemon used (user +
# system), which varies far less from run to run than wall-clock time on a
# small machine.
# Target: the daemon adds <= 10% to `synthd deid`'s time; metrics on is
# within 3% of metrics off; a scrape during a 1,000-instance study < 10 ms. On ext4 without a
# journal, start it at least six minutes after many files were deleted (see
# scripts/bench-deid.sh).
#
# Usage: scripts/bench-daemon.sh   (release build; WORKERS=2, REPEAT=3;
#        KEEP_SCRATCH=1 keeps the inputs, outputs and daemon logs;
#        CASES="many-small" runs one case; SIZES="64" one matrix size;
#        METRICS="on" only with metrics; SCRAPE_INTERVAL=1 scrapes less often;
#        SCALE=10 ten times the instances)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python=${SYNTHD_PYTHON:-$root/.venv/bin/python}
workers=${WORKERS:-2}
output_workers=${OUTPUT_WORKERS:-$((3 * workers))}
repeat=${REPEAT:-3}
cases=${CASES:-one-large many-small}
sizes=${SIZES:-64 256}
metrics_modes=${METRICS:-off on}
scrape_interval_s=${SCRAPE_INTERVAL:-0.1}
# SCALE=N multiplies the instance counts: a 1,000-instance study takes about
# 0.1 s, and the 10 ms resolution of the timings is then 8 %; SCALE=10
# makes on/off differences of a few percent measurable.
scale=${SCALE:-1}
stable_age_s=1

# SYNTHD_BIN overrides the binary (e.g. a debug build, to check this script).
if [ -z "${SYNTHD_BIN:-}" ]; then
  cargo build --release --quiet
fi
bin=${SYNTHD_BIN:-$root/target/release/synthd}
scratch=$(mktemp -d)
daemon_pid=
scraper_pid=
cleanup() {
  [ -n "$scraper_pid" ] && kill "$scraper_pid" 2>/dev/null || true
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null || true
  if [ -n "${KEEP_SCRATCH:-}" ]; then echo "scratch kept: $scratch" >&2; else rm -rf "$scratch"; fi
}
trap cleanup EXIT

now() { date +%s.%N; }
count_outputs() { find "$1" -type f -name '*.dcm' | wc -l; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# percentile P: nearest rank (the smallest value with at least P% of the values at or below it).
percentile() { sort -g | awk -v p="$1" '{ v[NR] = $1 } END { r = int(NR * p / 100); if (r < NR * p / 100) r++; if (r < 1) r = 1; print v[r] }'; }

# run_deid DIR RUN -> prints "seconds rss_kib"
run_deid() {
  local dir=$1 run=$2 t0 t1
  sync
  t0=$(now)
  /usr/bin/time -f "%M" -o "$dir/deid-$run.rss" "$bin" deid "$dir/src" --output "$dir/deid-out-$run" \
    --key-file "$dir/bench.key" --pipeline pipelines/deid-only.toml --jobs "$workers" >/dev/null 2>"$dir/deid-$run.log"
  t1=$(now)
  echo "$(echo "$t1 - $t0" | bc -l) $(cat "$dir/deid-$run.rss")"
}

# cpu_seconds PID: user + system CPU time the process has used so far.
cpu_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}

# run_daemon DIR RUN STUDIES TOTAL METRICS -> prints "latency first_output rss_kib latency_to_finished
# daemon_cpu_s scraper_cpu_s"; with METRICS=on, each scrape's seconds go to DIR/scrapes-RUN.txt.
run_daemon() {
  local dir=$1 run=$2 studies=$3 total=$4 metrics=$5
  local layout=$dir/layout-$run-metrics-$metrics
  "$bin" init "$layout" >/dev/null
  local config=$layout/synthd.toml
  sed -i -e "s/stable_age = \"60s\"/stable_age = \"${stable_age_s}s\"/" \
    -e 's/settle = "2s"/settle = "200ms"/' \
    -e 's/min_free_space = "512MiB"/min_free_space = "1MiB"/' \
    -e "s/deid_workers = 2/deid_workers = $workers/" \
    -e "s/output_workers = 6/output_workers = $output_workers/" \
    -e 's/summary_interval = "5m"/summary_interval = "1h"/' "$config"
  local port=
  if [ "$metrics" = on ]; then
    port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    printf '\n[metrics]\nlisten = "127.0.0.1:%s"\n' "$port" >>"$config"
  fi
  mkdir -p "$layout/stage"
  cp -r "$dir/src/." "$layout/stage/"
  sync
  local log=$dir/daemon-$run-metrics-$metrics.log
  "$bin" run --allow-root --config "$config" 2>"$log" &
  daemon_pid=$!
  until grep -qs serving "$log"; do sleep 0.05; done
  # The mover prints when its last rename landed: the daemon counts
  # stable_age from each file's arrival (its ctime), so expiry is that
  # moment plus stable_age, not when this script gets round to reading a clock.
  local t_moved t_first t_last t_done
  t_moved=$("$python" - "$layout/stage" "$layout/inbox" <<'PY'
import os, sys, time
stage, inbox = sys.argv[1], sys.argv[2]
for study in sorted(os.listdir(stage)):
    for name in sorted(os.listdir(os.path.join(stage, study))):
        os.rename(os.path.join(stage, study, name), os.path.join(inbox, f"{study}-{name}"))
print(f"{time.time():.6f}")
PY
)
  if [ -n "$port" ]; then
    # One client process for all scrapes (a new curl per scrape would time
    # its own start-up threads too); each line: start (epoch s), seconds.
    "$python" - "$port" "$scrape_interval_s" >"$dir/scrape-log-$run.txt" <<'PY' &
import socket, sys, time
port, interval = int(sys.argv[1]), float(sys.argv[2])
while True:
    start, t0 = time.time(), time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass
    print(f"{start:.6f} {time.perf_counter() - t0:.6f}", flush=True)
    time.sleep(interval)
PY
    scraper_pid=$!
  fi
  # The probe must not compete for the CPUs the daemon is measured on, so
  # it looks rarely and reads no clock: the finish time is the timestamp
  # the daemon logged on its last "study finished" line, and the first
  # output's time is the earliest modification time in the outbox.
  while [ "$(grep -c 'study finished' "$log")" -lt "$studies" ]; do
    sleep 0.25
  done
  local scraper_cpu=0
  if [ -n "$scraper_pid" ]; then
    scraper_cpu=$(cpu_seconds "$scraper_pid")
    kill "$scraper_pid" 2>/dev/null || true
    wait "$scraper_pid" 2>/dev/null || true
    scraper_pid=
  fi
  t_last=$(date -d "$(grep 'study written' "$log" | tail -1 | cut -d' ' -f1)" +%s.%N)
  t_done=$(date -d "$(grep 'study finished' "$log" | tail -1 | cut -d' ' -f1)" +%s.%N)
  t_first=$(find "$layout/outbox" -type f -name '*.dcm' -printf '%T@\n' | sort -g | head -1)
  local rss_kib
  rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$daemon_pid/status")
  # From its start to the last study finished: it includes the idle turns
  # before the files arrive and during stable_age, the same in both modes.
  local daemon_cpu
  daemon_cpu=$(cpu_seconds "$daemon_pid")
  kill -TERM "$daemon_pid"
  wait "$daemon_pid" || true
  daemon_pid=
  [ "$(count_outputs "$layout/outbox")" -eq "$total" ] || { echo "bench: outbox does not hold $total outputs" >&2; exit 1; }
  local expiry
  expiry=$(echo "$t_moved + $stable_age_s" | bc -l)
  # The scrapes that started while the daemon worked: stable_age expiry to the last study written.
  if [ -n "$port" ]; then
    awk -v from="$expiry" -v to="$t_last" '$1 >= from && $1 <= to { print $2 }' "$dir/scrape-log-$run.txt" >>"$dir/scrapes-$run.txt"
  fi
  echo "$(echo "$t_last - $expiry" | bc -l) $(echo "$t_first - $expiry" | bc -l) $rss_kib $(echo "$t_done - $expiry" | bc -l)" \
    "$daemon_cpu $scraper_cpu"
}

bench_case() {
  local name=$1 studies=$2 per_study=$3 size=$4
  local total=$((studies * per_study))
  local dir=$scratch/$name-$size
  mkdir -p "$dir"
  "$python" fixtures/daemon/make_mr.py "$dir/src" "$studies" "$per_study" "$size"
  "$bin" keygen "$dir/bench.key" >/dev/null
  printf '%s, %dx%d: %d studies x %d instances = %d (%s)\n' "$name" "$size" "$size" "$studies" "$per_study" "$total" \
    "$(du -sh "$dir/src" | cut -f1)"
  local run deid daemon mode
  : >"$dir/deid.txt"
  for mode in $metrics_modes; do : >"$dir/daemon-$mode.txt"; done
  for run in $(seq 1 "$repeat"); do
    deid=$(run_deid "$dir" "$run")
    echo "$deid" >>"$dir/deid.txt"
    printf '  run %d: synthd deid %.2f s' "$run" "${deid%% *}"
    # Metrics off and on alternate within a run, so drift on a shared
    # machine hits both, and swap places every other run, so that neither
    # always runs second (after the other's writes).
    local order=$metrics_modes
    [ $((run % 2)) -eq 0 ] && order=$(echo "$metrics_modes" | tr ' ' '\n' | tac | tr '\n' ' ')
    for mode in $order; do
      daemon=$(run_daemon "$dir" "$run" "$studies" "$total" "$mode")
      echo "$daemon" >>"$dir/daemon-$mode.txt"
      printf ', daemon (metrics %s) %.2f s' "$mode" "${daemon%% *}"
    done
    printf '\n'
  done
  for mode in $metrics_modes; do
    report_daemon "$dir" "$mode" "$total"
  done
  if [[ " $metrics_modes " == *" off "* && " $metrics_modes " == *" on "* ]]; then
    local off_s on_s
    off_s=$(cut -d' ' -f1 "$dir/daemon-off.txt" | median)
    on_s=$(cut -d' ' -f1 "$dir/daemon-on.txt" | median)
    printf '  metrics on/off throughput ratio: %.3f (%+.1f%% time; target within 3%%)\n' \
      "$(echo "$off_s / $on_s" | bc -l)" "$(echo "($on_s / $off_s - 1) * 100" | bc -l)"
    # Per run (on and off ran back to back), so drift between runs cancels.
    printf '  per run, on/off throughput:'
    paste -d' ' <(cut -d' ' -f1 "$dir/daemon-off.txt") <(cut -d' ' -f1 "$dir/daemon-on.txt") |
      awk '{ printf " %.3f", $1 / $2 }'
    printf '; median of the pairs: %.3f\n' "$(paste -d' ' <(cut -d' ' -f1 "$dir/daemon-off.txt") \
      <(cut -d' ' -f1 "$dir/daemon-on.txt") | awk '{ print $1 / $2 }' | median)"
    printf '  daemon CPU on/off: %.3f of the medians, %.3f median of the pairs\n' \
      "$(echo "$(cut -d' ' -f5 "$dir/daemon-on.txt" | median) / $(cut -d' ' -f5 "$dir/daemon-off.txt" | median)" | bc -l)" \
      "$(paste -d' ' <(cut -d' ' -f5 "$dir/daemon-off.txt") <(cut -d' ' -f5 "$dir/daemon-on.txt") |
        awk '{ print $2 / $1 }' | median)"
  fi
  local scrapes
  scrapes=$(cat "$dir"/scrapes-*.txt 2>/dev/null | awk '{ printf "%.3f\n", $1 * 1000 }')
  if [ -n "$scrapes" ]; then
    printf '  /metrics scrapes while the daemon worked: %d, median %.2f ms, p95 %.2f ms, max %.2f ms (target < 10 ms)\n' \
      "$(echo "$scrapes" | wc -l)" "$(echo "$scrapes" | median)" "$(echo "$scrapes" | percentile 95)" \
      "$(echo "$scrapes" | sort -g | tail -1)"
  fi
}

# report_daemon DIR METRICS TOTAL: the medians of one metrics mode's runs.
report_daemon() {
  local dir=$1 mode=$2 total=$3
  local deid_s daemon_s first_s deid_rss daemon_rss done_s
  deid_s=$(cut -d' ' -f1 "$dir/deid.txt" | median)
  deid_rss=$(cut -d' ' -f2 "$dir/deid.txt" | sort -g | tail -1)
  daemon_s=$(cut -d' ' -f1 "$dir/daemon-$mode.txt" | median)
  first_s=$(cut -d' ' -f2 "$dir/daemon-$mode.txt" | median)
  daemon_rss=$(cut -d' ' -f3 "$dir/daemon-$mode.txt" | sort -g | tail -1)
  done_s=$(cut -d' ' -f4 "$dir/daemon-$mode.txt" | median)
  [ "$mode" = "${metrics_modes%% *}" ] && printf '  synthd deid (--jobs %d), median: %7.2f s  %7.1f inst/s  peak RSS %6.1f MiB\n' \
    "$workers" "$deid_s" "$(echo "$total / $deid_s" | bc -l)" "$(echo "$deid_rss / 1024" | bc -l)"
  printf '  metrics %s:\n' "$mode"
  printf '  daemon, stable_age expiry -> outbox (last study written), median: %7.2f s  %7.1f inst/s  peak RSS %6.1f MiB\n' \
    "$daemon_s" "$(echo "$total / $daemon_s" | bc -l)" "$(echo "$daemon_rss / 1024" | bc -l)"
  printf '  daemon first output, median: %.2f s after expiry; last study finished (originals archived): %.2f s\n' \
    "$first_s" "$done_s"
  printf '  daemon vs synthd deid: %+.1f%% (target <= +10%%)\n' "$(echo "($daemon_s / $deid_s - 1) * 100" | bc -l)"
  printf '  CPU, median: daemon %.2f s (start to finish), scraping client %.3f s\n' \
    "$(cut -d' ' -f5 "$dir/daemon-$mode.txt" | median)" "$(cut -d' ' -f6 "$dir/daemon-$mode.txt" | median)"
}

echo "synthd daemon benchmark ($(nproc) cores, workers=$workers, stable_age=${stable_age_s}s, $repeat runs each)"
for size in $sizes; do
  for case in $cases; do
    case $case in
      one-large) bench_case one-large 1 $((1000 * scale)) "$size" ;;
      many-small) bench_case many-small $((100 * scale)) 10 "$size" ;;
      *) echo "bench: unknown case $case (one-large, many-small)" >&2; exit 2 ;;
    esac
  done
done
