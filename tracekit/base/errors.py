"""Errors that end a command with one clear line and a distinct exit status.

Every error a user can cause or meet (bad arguments, a foreign trace file, a kernel
without what a probe needs) is one of these. The CLI prints ``tracekit: <message>``
and exits with ``exit_code``; nothing a user does should produce a traceback.
"""

from __future__ import annotations


class TracekitError(Exception):
    """Base class: a problem to report in one line, not a bug."""

    exit_code = 1
    # Set when the message was already printed (a sink that failed mid-run says why
    # at once); the CLI then exits with the status without a second line.
    reported = False


class UsageError(TracekitError):
    """Unknown probe or sink, bad parameter, bad sink argument."""

    exit_code = 2


class TraceFileError(TracekitError):
    """Not a tracekit trace, corrupt, or an unsupported format version."""

    exit_code = 2


class DuplicateError(TracekitError):
    """Two plugins registered a probe or sink under the same name."""

    exit_code = 2


class BccMissingError(TracekitError):
    """BCC (python3-bpfcc) cannot be imported."""

    exit_code = 3


class PermissionProblem(TracekitError):
    """Not root and without CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN."""

    exit_code = 4


class HeadersMissingError(TracekitError):
    """No kernel headers for the running kernel."""

    exit_code = 5


class AttachPointError(TracekitError):
    """A function the probe attaches to is missing, renamed (.isra/.constprop) or inlined."""

    exit_code = 6


class ModuleNotLoadedError(TracekitError):
    """The probe needs a kernel module that is not loaded (for example sch_fq)."""

    exit_code = 7


class BtfMissingError(TracekitError):
    """The probe needs BTF (/sys/kernel/btf) and the kernel has none."""

    exit_code = 8


class ResourceError(TracekitError):
    """Allocating a map or buffer failed (RLIMIT_MEMLOCK, memory)."""

    exit_code = 9


class SinkFailedError(TracekitError):
    """A sink raised; the run went on with the other sinks."""

    exit_code = 10


class CompileError(TracekitError):
    """BCC could not compile or load the probe."""

    exit_code = 11


class LabError(TracekitError):
    """The namespace lab could not be built or a tool it needs is missing."""

    exit_code = 12


class InterruptedBeforeStart(TracekitError):
    """Ctrl-C or SIGTERM before tracing started (compiling, opening, attaching).

    Nothing is attached and nothing was recorded; the status is the shell's for
    SIGINT, as for any command stopped before it did its work.
    """

    exit_code = 130


class ExtraMissingError(TracekitError):
    """A command needs the optional ``fleet`` extra (pyarrow, matplotlib, ...)."""

    exit_code = 13


class PluginError(TracekitError):
    """A plugin breaks the contract: an unknown hook, a hookwrapper, a misspelt method."""

    exit_code = 14


class KernelTooOldError(TracekitError):
    """The running kernel is older than the probe's ``min_kernel``."""

    exit_code = 15


class LibbpfMissingError(TracekitError):
    """The system's libbpf (1.0 or later), which the CO-RE loader calls, is missing."""

    exit_code = 16


class TracefsMissingError(TracekitError):
    """tracefs, which attaching a tracepoint needs, is not mounted or not readable."""

    exit_code = 17
