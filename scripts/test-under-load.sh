#!/usr/bin/env bash
# The VM suite with the host's cores kept busy, as on a shared CI machine: issue #11's
# "passes twice in a row under load". Runs the same VM command as scripts/test.sh,
# RUNS times in a row (default 2), each while `stress-ng --cpu N` (N = the host's
# cores) keeps every core busy; stops at the first failing run. Each run's time and
# result go to stdout and to .vm-out/under-load.log.
#
#   bash scripts/test-under-load.sh [RUNS] [-- vm/run options, e.g. --kernel 7.2]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-2}"
shift $(( $# > 0 ? 1 : 0 ))
[ "${1:-}" != "--" ] || shift
vm_opts=("$@")
bash scripts/setup.sh
mkdir -p .vm-out
log=.vm-out/under-load.log
cpus="$(nproc)"
stress_pid=""
stop_stress() { [ -z "$stress_pid" ] || kill "$stress_pid" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop_stress EXIT
for i in $(seq 1 "$runs"); do
  stress-ng --cpu "$cpus" --timeout 0 --quiet &
  stress_pid=$!
  # The load is there before the VM starts: stress-ng's workers are running.
  for _ in $(seq 1 50); do
    [ "$(pgrep -c -P "$stress_pid" || true)" -ge "$cpus" ] && break
    sleep 0.1
  done
  start=$(date +%s)
  rm -f .vm-out/*.tkt .vm-out/*.txt
  set +e
  vm/run "${vm_opts[@]}" -- python -m pytest -p no:hypothesispytest -m vm -v --durations=15 tests/vm \
    examples/tracekit-tcp-retrans/tests
  rc=$?
  set -e
  load="$(cut -d' ' -f1-3 /proc/loadavg)"
  stop_stress
  stress_pid=""
  line="$(date -u +%FT%TZ) run $i/$runs ${vm_opts[*]:-(6.1)}: rc=$rc in $(( $(date +%s) - start ))s, load $load, stress-ng --cpu $cpus"
  echo "$line" | tee -a "$log"
  [ "$rc" = 0 ] || exit "$rc"
done
