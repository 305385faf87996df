#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: set-up, lint and types, unit tests
# on the host, kernel tests in the VM (one boot, one pytest session), then host-side
# checks of what the VM recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
py=.venv/bin/python
start=$(date +%s)

echo "== lint and types"
.venv/bin/ruff check tracekit plugins probes tests bench examples
.venv/bin/mypy

echo "== host tests"
$py -m pytest -m "not vm and not after_vm" tests
(cd examples/tracekit-tcp-retrans && ../../$py -m pytest)

echo "== VM tests"
rm -f .vm-out/*.tkt .vm-out/*.txt
vm/run -- python -m pytest -p no:hypothesispytest -m vm -v --durations=15 tests/vm \
  examples/tracekit-tcp-retrans/tests

echo "== host checks of the VM's recordings"
TRACEKIT_REQUIRE_VM_ARTIFACTS=1 $py -m pytest -m after_vm tests

# The kernel matrix (docs/kernels.md): on the other rows, every built-in probe against
# its kernel oracle from BTF alone (CO-RE, headers hidden), and on 6.12 and 7.2 the
# tests of what only newer kernels have (fq's drop reasons, the TX-queue reselection
# timer, ooo_okay's rules: their second tracer, bpftrace, needs a newer bpftrace than
# the 5.10 row's 0.17). The whole suite there costs about 45 minutes a row under TCG
# (BCC compiles); these 5 to 7 minutes (2026-11-24: 5.10 6 min, 6.12 6 min, 7.2 5 min).
# TRACEKIT_CI_ROWS chooses the rows ("" skips the matrix).
matrix=(tests/vm/test_no_headers.py tests/vm/test_fq_drop_reasons.py
        tests/vm/test_txq_reselect.py tests/vm/test_ooo_okay_rules.py)
for row in ${TRACEKIT_CI_ROWS-5.10 6.12 7.2}; do
  echo "== VM tests on kernel row $row"
  files=("${matrix[@]}")
  [ "$row" != 5.10 ] || files=(tests/vm/test_no_headers.py)
  vm/run --kernel "$row" -- python -m pytest -p no:hypothesispytest -m vm -v "${files[@]}"
done

echo "== all tests passed in $(( $(date +%s) - start ))s"
