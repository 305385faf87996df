"""The wheel's build hook: the built-in probes' CO-RE objects, compiled by clang.

Everything else is in pyproject.toml. ``build_py`` copies the package as usual, then
compiles each built-in probe (``probes/*/NAME.bpf.c``) for CO-RE into the wheel's
``tracekit/probes/core/``, with each object's manifest and hashes and ``BUILD.json``
(the clang that built them, its flags, each object's SHA-256): an installed tracekit
then loads them from the kernel's BTF and compiles nothing. The same sources and the
same clang give the same bytes. Editable installs (a development tree) build nothing
here: ``tracekit build`` fills the cache there. ``TRACEKIT_WHEEL_NO_CORE=1`` builds a
wheel without objects (the BCC path only), for a machine without clang.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithCore(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False) or os.environ.get("TRACEKIT_WHEEL_NO_CORE") == "1":
            return
        sys.path.insert(0, str(HERE))
        from tracekit.bpf.core_build import build_shipped

        dest = Path(self.build_lib) / "tracekit" / "probes" / "core"
        record = build_shipped(HERE / "probes", dest)
        names = ", ".join(sorted(record["objects"]))
        print(f"tracekit: CO-RE objects of {names} built by {record['clang']}", file=sys.stderr)


setup(cmdclass={"build_py": BuildPyWithCore})
