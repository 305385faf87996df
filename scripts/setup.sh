#!/usr/bin/env bash
# Install everything tracekit needs on a fresh Debian bookworm machine (as root):
# the apt packages for the VM and for BCC, and the project's venv (.venv), made
# from the system Python with --system-site-packages so it sees python3-bpfcc.
# Idempotent: does only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  qemu-system-x86            # the VM
  busybox-static             # virtme-ng builds the guest's initramfs from a static busybox
  linux-image-amd64          # the guest kernel (booted by virtme-ng, never by this host)
  linux-headers-amd64        # BCC in the guest compiles against these
  python3-bpfcc bpfcc-tools  # BCC
  bpftrace                   # the second tracer some tests compare with
  bpftool                    # lists BPF programs: nothing of tracekit stays attached
  iperf3 iproute2 ethtool util-linux procps kmod  # the labs
  python3-venv python3-pip
  clang libbpf-dev linux-libc-dev  # builds the CO-RE probe objects (tracekit build), once
  gcc                        # bench/drain.py builds its C consumer (libbpf)
  libbpf1                    # loads them (ctypes): no BCC, no kernel headers at run time
  stress-ng                  # keeps the host's cores busy for the under-load VM runs
  mmdebstrap                 # vm/guest-root: the other kernels' guest roots (vm/run --kernel)
  prometheus                 # the real server tests/vm/test_prometheus.py scrapes tracekit with
  systemd                    # systemd-analyze verifies the exporter's unit (tests/test_service.py)
)

# Every program the project runs (scripts, vm/, tracekit, tests, bench), each from a
# package above or from Debian's required set. tests/test_setup.py checks both ways:
# the code runs nothing missing from this list, and dpkg says which package owns each.
PROGRAMS=(
  qemu-system-x86_64 busybox
  ip tc ss ethtool iperf3 taskset nsenter setpriv unshare flock mount sysctl
  modprobe rmmod bpftool bpftrace stress-ng
  clang gcc sh bash cat cp awk grep sed dpkg dpkg-query
  mmdebstrap chroot           # vm/guest-root: a Debian root per kernel of the matrix
  prometheus                  # tests/vm/test_prometheus.py (the VM runs the host's binary)
  promtool                    # checks and unit-tests the alerting rules (tests/test_service.py)
  systemd-analyze             # verifies the exporter's systemd unit (tests/test_service.py)
)

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

absent=()
for prog in "${PROGRAMS[@]}"; do
  PATH="$PATH:/usr/sbin:/sbin" command -v "$prog" >/dev/null || absent+=("$prog")
done
if ((${#absent[@]})); then
  echo "setup: installed, yet not on PATH: ${absent[*]}" >&2
  exit 1
fi

pip_install() {
  .venv/bin/pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v '^WARNING: Location' || true
}
# The distribution is tracekit-ebpf (0.2.0; PyPI's "tracekit" is another project): a
# .venv made before has this tree installed as "tracekit", which goes first.
# (pip show, not importlib.metadata: that would also find a build's egg-info in the tree.)
if [ -x .venv/bin/pip ] && .venv/bin/pip show -q tracekit >/dev/null 2>&1; then
  .venv/bin/pip uninstall -q -y tracekit >/dev/null 2>&1 || true
fi
if [ ! -x .venv/bin/python ] || [ ! -x .venv/bin/py-spy ] \
  || ! .venv/bin/python -c 'import tracekit, pytest, virtme_ng, isal' 2>/dev/null \
  || ! .venv/bin/pip show -q tracekit-ebpf >/dev/null 2>&1; then
  echo "setup: creating .venv" >&2
  /usr/bin/python3 -m venv --system-site-packages .venv
  pip_install -e '.[dev]'
  .venv/bin/python -c 'import tracekit, pytest, virtme_ng'
fi
# The fleet extra: tracekit export (pyarrow), plot (matplotlib), the prometheus sink
# (prometheus-client), and duckdb for the analysis docs and their tests.
if ! .venv/bin/python -c 'import pyarrow, duckdb, matplotlib, prometheus_client' 2>/dev/null; then
  echo "setup: installing tracekit-ebpf[fleet]" >&2
  pip_install -e '.[dev,fleet]'
  .venv/bin/python -c 'import pyarrow, duckdb, matplotlib, prometheus_client'
fi
# The example third-party plugin, installed as a user would: with pip, from its folder;
# again whenever its files change (a copy installed once went stale in a long-lived .venv).
example_sum="$(find examples/tracekit-tcp-retrans -type f -not -path '*/__pycache__/*' \
  -not -path '*.egg-info/*' -not -path '*/build/*' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)"
if ! .venv/bin/python -c 'import tracekit_tcp_retrans' 2>/dev/null \
  || [ "$(cat .venv/.tracekit-tcp-retrans.sum 2>/dev/null)" != "$example_sum" ]; then
  echo "setup: installing examples/tracekit-tcp-retrans" >&2
  pip_install --force-reinstall --no-deps ./examples/tracekit-tcp-retrans
  echo "$example_sum" > .venv/.tracekit-tcp-retrans.sum
fi

# Byte-code of the tree's modules. An editable install has none (a wheel gets it
# from pip, a Debian package from py3compile), and with PYTHONDONTWRITEBYTECODE set
# (vm/run's guest, this sandbox) or a read-only tree (the VM), every `tracekit run`
# would compile its ~40 modules from source before the first event: a quarter of its
# start-up's CPU time. Stale files are rewritten; a source edited since is compiled
# in memory by Python as before, never run from old byte-code.
.venv/bin/python -m compileall -q tracekit plugins probes >/dev/null

# The CO-RE objects of the probes that have one, into /var/cache/tracekit/core
# (owned by root, checked before every load): start-up then needs no compiler.
$SUDO .venv/bin/tracekit build >/dev/null
