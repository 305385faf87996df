#!/usr/bin/env bash
# The wheel and its dependencies' wheels for the VM (which has no network), on the
# host: tracekit-ebpf's wheel into .vm-out/wheels/, and for each kernel row given
# (default: those of the matrix) the run-time dependencies' wheels for that row's
# Python into .vm-out/wheels/pyX.Y/. tests/vm/test_wheel.py installs from there
# with pip --no-index. Needs clang (the wheel's CO-RE objects) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.vm-out/wheels
mkdir -p "$out"
rm -f "$out"/tracekit_ebpf-*.whl
.venv/bin/pip wheel -q --no-deps -w "$out" . 2>&1 | grep -v '^WARNING: Location' >&2 || true
rm -rf build tracekit_ebpf.egg-info
ls "$out"/tracekit_ebpf-*.whl >/dev/null

pyver_of() {  # the Python of a kernel row's guest
  local release
  release="$(bash vm/guest-root release "$1")"
  if [ "$release" = "$( . /etc/os-release && echo "$VERSION_CODENAME")" ]; then
    /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])'
  else
    bash vm/guest-root chroot "$1" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])'
  fi
}

mapfile -t deps < <(.venv/bin/python -c 'import sys, tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
rows=("$@")
((${#rows[@]})) || mapfile -t rows < <(bash vm/guest-root names | cut -d' ' -f1)
for row in "${rows[@]}"; do
  v="$(pyver_of "$row" | tail -1)"
  [ -d "$out/py$v" ] && [ -f "$out/py$v/.deps" ] && [ "$(cat "$out/py$v/.deps")" = "${deps[*]}" ] && continue
  rm -rf "$out/py$v"
  .venv/bin/pip download -q --only-binary=:all: --python-version "$v" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform linux_x86_64 \
    -d "$out/py$v" "${deps[@]}" 2>&1 | grep -v '^WARNING: Location' >&2 || true
  echo "${deps[*]}" > "$out/py$v/.deps"
  echo "vm-wheels: row $row (Python $v): $(ls "$out/py$v" | grep -c whl) wheels" >&2
done
