"""The docs, as a user reads them: the README's Install steps work as written in a
clean venv (offline, from the wheels the session built), and no doc points outside
the repository or to a path of the machine it was written on."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.wheelhouse import ROOT, wheelhouse

DOCS = sorted(
    [
        ROOT / "README.md",
        *ROOT.glob("docs/**/*.md"),
        *ROOT.glob("probes/*/README.md"),
        *ROOT.glob("examples/*/README.md"),
        *ROOT.glob("tracekit/cli/templates/*/README.md.tmpl"),
    ]
)
# Absolute paths of a build machine: home folders, root's, a workspace's, this tree's.
MACHINE_PATHS = re.compile(r"(?<![\w.~])/(?:work|home|root|Users|srv/[\w-]+/src)/[\w.-]+")
RELATIVE = re.compile(r"(?<![\w/.])(?:\.\./)+[\w.][\w./-]*")


def test_the_docs_name_no_path_outside_the_repository() -> None:
    problems = []
    for doc in DOCS:
        text = doc.read_text()
        rel = doc.relative_to(ROOT)
        for m in MACHINE_PATHS.finditer(text):
            problems.append(f"{rel}: {m.group(0)} (a build machine's path)")
        if str(ROOT) in text:
            problems.append(f"{rel}: {ROOT} (this tree's absolute path)")
        for m in RELATIVE.finditer(text):
            # Lexically (a link inside the tree, as .venv's python, may point out).
            target = Path(os.path.normpath(doc.parent / m.group(0)))
            if not target.is_relative_to(ROOT):
                problems.append(f"{rel}: {m.group(0)} (outside the repository)")
    assert not problems, "\n".join(problems)


def test_the_path_check_catches_what_it_should() -> None:
    assert MACHINE_PATHS.search("see /work/main/README.md")
    assert MACHINE_PATHS.search("`/home/alice/tracekit`")
    assert not MACHINE_PATHS.search("~/.local/share/tracekit and /var/cache/tracekit/core")
    assert RELATIVE.search("the two in `../shared/seeds/`")


def readme_install_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- install-venv[^>]*-->\n```\n(.*?)```", text, re.S)
    assert m, "README.md has no install-venv block"
    return [ln for ln in m.group(1).splitlines() if ln.strip()]


def test_the_readmes_install_steps_work_in_a_clean_venv(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The README's venv steps as written, with HOME a fresh folder, pip offline (the
    session's wheels only), no system site packages: a working `tracekit --version`
    and `tracekit check`, on the objects the wheel shipped, without BCC."""
    wheels = wheelhouse(tmp_path_factory)
    lines = readme_install_lines()
    assert lines[0].startswith("python3 -m venv ") and "pip install tracekit-ebpf" in lines[1]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheels),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "TRACEKIT_MOUNT_TRACEFS": "0",
        "LC_ALL": "C.UTF-8",
    }
    outputs = []
    for line in lines:
        if line.startswith("sudo "):
            if os.geteuid() != 0:
                continue
            line = line.removeprefix("sudo ")
        p = subprocess.run(
            ["bash", "-c", line], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
        )
        assert "Traceback" not in p.stderr, (line, p.stderr)
        outputs.append((line, p))
    (_, venv), (_, install), (_, version), *rest = outputs
    assert venv.returncode == 0 and install.returncode == 0, install.stderr
    assert version.returncode == 0, version.stderr
    out = version.stdout
    assert out.startswith("tracekit ") and "(distribution tracekit-ebpf " in out
    site = str(tmp_path / ".local/share/tracekit/lib")
    assert re.search(rf"CO-RE objects: {re.escape(site)}\S*/tracekit/probes/core \(built by ", out)
    for probe in ("txq-flip", "rss-cpu", "ooo-okay", "fq-throttle"):
        assert re.search(rf"^  {probe}: {re.escape(site)}\S*/core/{probe}-\w+\.bpf\.o$", out, re.M)
    assert "BCC: not installed" in out, out  # no system site packages: BCC is optional
    if rest:
        (_, check) = rest[0]
        first, *details = check.stdout.splitlines()
        assert first.startswith(("ready: ", "not ready: ")), check.stdout
        loaders = [ln for ln in details if ln.startswith("  loader: ")]
        assert len(loaders) == 4 and all("shipped with tracekit" in ln for ln in loaders), loaders
        # Its status is the blocker's: 0 only when the verdict says ready.
        assert (check.returncode == 0) == first.startswith("ready: ")
