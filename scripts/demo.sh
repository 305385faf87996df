#!/usr/bin/env bash
# The main job on a fresh Debian machine: install what is needed, boot the VM and
# run the seed's XPS experiment there, printing txq-flip's histogram beside
# iperf3's throughput and the qdisc's own per-queue counters.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec vm/run -- tracekit lab txq-flip --duration "${DURATION:-10}" --sink hist "$@"
