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

# The host tests again on the newer rows' Pythons (3.13: 6.12, 3.14: 7.2; the host's is
# 3.11, the oldest tracekit supports), chrooted into each row's root, no VM
# (TRACEKIT_CI_PYTHONS; "" skips them).
for row in ${TRACEKIT_CI_PYTHONS-6.12 7.2}; do
  echo "== host tests on kernel row $row's Python"
  vm/guest-root chroot "$row" python -m pytest -q -p no:cacheprovider -m "not vm and not after_vm" tests
done

# The kernel matrix (docs/kernels.md, "CI"). The whole VM suite runs on the newest row
# (TRACEKIT_CI_FULL, default 7.2: the newest row whose BCC builds against its own
# headers; 7.3, the newest kernel Debian ships, is a row of its own below, its probes
# from the installed wheel: trixie-backports' BCC fails the BCC loader's tests there),
# then the host checks of what it recorded; on the other rows (TRACEKIT_CI_ROWS, default
# "6.1 6.12 7.2 5.10"; "" skips them) the installed wheel's probes against their kernel
# oracles (tests/vm/test_wheel.py: pip from wheels only into a venv without system site
# packages; headers, clang and BCC out of reach) and the tests of what changed between
# kernels (fq's drop reasons, the TX-queue reselection timer, ooo_okay's rules; each
# skips where its kernel lacks it; not on 5.10, below). The whole suite on every row
# leaves no room in CI's time for a busy machine: about 15 minutes a row idle under TCG,
# up to 45 under load; these 3 to 4 minutes a row (docs/kernels.md, "CI").
full="${TRACEKIT_CI_FULL-7.2}"
rows="${TRACEKIT_CI_ROWS-7.3 6.1 6.12 5.10}"
# The wheel, and its dependencies' wheels for each row's Python, built here: the VM has
# no network.
echo "== the wheel and its dependencies' wheels (.vm-out/wheels)"
# shellcheck disable=SC2086
bash scripts/vm-wheels.sh $full $rows
echo "== VM tests: the whole suite on kernel row $full"
rm -f .vm-out/*.tkt .vm-out/*.txt
vm/run --kernel "$full" -- env TRACEKIT_REQUIRE_WHEELS=1 python -m pytest -p no:hypothesispytest \
  -m vm -v --durations=15 tests/vm examples/tracekit-tcp-retrans/tests

echo "== host checks of the VM's recordings"
TRACEKIT_REQUIRE_VM_ARTIFACTS=1 $py -m pytest -m after_vm tests

matrix=(tests/vm/test_wheel.py tests/vm/test_fq_drop_reasons.py
        tests/vm/test_txq_reselect.py tests/vm/test_ooo_okay_rules.py)
for row in $rows; do
  echo "== VM tests on kernel row $row: the installed wheel's probes against their oracles"
  files=("${matrix[@]}")
  # 5.10: fq-throttle's tests skip (5.11+) and the ooo-okay rules' bpftrace (0.17, given
  # the headers there) once did not exit within 120 s of SIGINT: its oracles only.
  [ "$row" != 5.10 ] || files=(tests/vm/test_no_headers.py)
  # 7.3: the probes from the installed wheel (CO-RE) only; the kernel-change tests
  # build probes with BCC, which trixie-backports' BCC fails against 7.3's headers.
  [ "$row" != 7.3 ] || files=(tests/vm/test_wheel.py)
  vm/run --kernel "$row" -- env TRACEKIT_REQUIRE_WHEELS=1 python -m pytest -p no:hypothesispytest \
    -m vm -v "${files[@]}"
done

echo "== all tests passed in $(( $(date +%s) - start ))s"
