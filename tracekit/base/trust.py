"""Files a root process may trust, and files it writes without following links.

Two halves, as sudo, OpenSSH and perf divide them:

**Reading what root trusts** (the CO-RE cache, a folder named by ``TRACEKIT_*``): a
path is used only when every component from ``/`` is owned by root (or by the
invoking user, when that is not root) and is not writable by group or others, as
OpenSSH's StrictModes checks. A folder writable by others is accepted as an
ancestor only when it has the sticky bit and is owned by root (``/tmp``): its
entries can then be renamed or removed by their owners alone, and the entry below
it must itself be owned by root or the user. Symbolic links met on the way are
followed only when they sit in a trusted folder and are owned by root or the user;
the walk is done with a file descriptor per folder (``openat``), so what is checked
is what is used, and a file is opened with ``O_NOFOLLOW`` below the last checked
folder and read once (``read_trusted``): the caller hashes and uses those bytes,
never the path again.

**Writing outputs** (traces, exports, plots, the CO-RE cache): ``OutputFile``
writes a temporary file created beside the target with an unpredictable name
(``O_CREAT | O_EXCL | O_NOFOLLOW``), flushes it to disk and renames it into place;
``create_output`` makes a file that is written while it grows (a recording). Both
refuse a target that is a symbolic link, a device, a FIFO or anything but a regular
file, follow no link at the last component, and create files with mode 0600 unless
the caller asks for another (``--mode``).

Under sudo, or in a set-uid or set-gid process, ``env`` ignores every ``TRACEKIT_*``
variable but the few documented as safe (docs/reliability.md, "Environment").
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

from tracekit.base.errors import TracekitError, UsageError
from tracekit.base.text import printable

# TRACEKIT_* variables honoured under sudo or set-uid: each can only show more or
# load less (docs/reliability.md, "Environment").
SAFE_ENV = frozenset(
    {"TRACEKIT_DISABLE_PLUGINS", "TRACEKIT_CLANG_WARNINGS", "TRACEKIT_MOUNT_TRACEFS"}
)

# The mode of every output file unless the user asks for another: traces and exports
# hold kernel addresses and host names (perf writes perf.data 0600 too).
DEFAULT_MODE = 0o600

_MAX_LINKS = 40  # as the kernel's ELOOP limit


class UntrustedPathError(TracekitError):
    """A path root would trust can be changed by another user."""

    exit_code = 2


def elevated() -> bool:
    """Whether this process runs with privileges its caller did not have: under sudo,
    or set-uid/set-gid. The environment then comes from someone root must not trust."""
    return (
        os.geteuid() != os.getuid()
        or os.getegid() != os.getgid()
        or bool(os.environ.get("SUDO_USER"))
        or bool(os.environ.get("SUDO_UID"))
    )


def env(name: str, default: str | None = None) -> str | None:
    """``os.environ[name]``, or ``default`` when it is unset, or when this process is
    elevated and ``name`` is not in ``SAFE_ENV``."""
    if elevated() and name not in SAFE_ENV:
        return default
    return os.environ.get(name, default)


def trusted_owners() -> frozenset[int]:
    """Who may own what root trusts: root, and the user itself when it is not root."""
    return frozenset({0, os.geteuid()})


def _owner_name(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def _problem(st: os.stat_result, shown: str, owners: frozenset[int]) -> str | None:
    """Why a file or folder with status ``st`` is not to be trusted, or None."""
    if st.st_uid not in owners:
        who = "root" if owners == {0} else "root or you"
        return f"{shown} is owned by {_owner_name(st.st_uid)}, not {who}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and st.st_uid == 0:
            return None  # /tmp: sticky, root's; its entries are checked in turn
        who = "others" if st.st_mode & stat.S_IWOTH else "its group"
        return f"{shown} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


class _Walk:
    """Folders opened one by one from ``/``, each checked through its own descriptor."""

    def __init__(self, owners: frozenset[int]) -> None:
        self.owners = owners
        self.fd = -1
        self.shown = "/"
        self.links = 0

    def _open_root(self) -> None:
        self._replace(os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), "/")

    def _replace(self, fd: int, shown: str) -> None:
        st = os.fstat(fd)
        why = _problem(st, shown, self.owners)
        if why is not None:
            os.close(fd)
            raise UntrustedPathError(why)
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.shown = fd, shown

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _join(self, name: str) -> str:
        return self.shown.rstrip("/") + "/" + name

    def walk(self, parts: list[str], create: int | None) -> None:
        """Into the folder ``parts`` names, from the current one (or ``/``), checking
        each; ``create``: the mode of folders made where missing (None: none made)."""
        todo = list(reversed(parts))
        if self.fd < 0:
            self._open_root()
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":
                fd = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd)
                self._replace(fd, os.path.dirname(self.shown.rstrip("/")) or "/")
                continue
            shown = self._join(name)
            try:
                st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            except FileNotFoundError:
                if create is None:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, create, dir_fd=self.fd)
                st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                # A link's own mode means nothing (always 0777): its owner and the
                # folder it is in (checked) decide who could change it.
                if st.st_uid not in self.owners:
                    raise UntrustedPathError(
                        f"the link {shown} is owned by {_owner_name(st.st_uid)}, not root"
                    )
                self.links += 1
                if self.links > _MAX_LINKS:
                    raise UntrustedPathError(f"{shown}: too many levels of symbolic links")
                target = os.readlink(name, dir_fd=self.fd)
                todo.extend(reversed(target.split("/")))
                if target.startswith("/"):
                    self._open_root()
                continue
            try:
                fd = os.open(
                    name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd
                )
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise UntrustedPathError(f"{shown} is not a folder") from None
                raise
            self._replace(fd, shown)


def _parts(path: str | os.PathLike[str]) -> list[str]:
    p = os.fspath(path)
    if not p.startswith("/"):
        p = os.path.join(os.getcwd(), p)
    return p.split("/")


@contextlib.contextmanager
def trusted_dir(
    path: str | os.PathLike[str], *, create: int | None = None, owners: frozenset[int] | None = None
) -> Iterator[int]:
    """A descriptor of folder ``path`` (``O_PATH``), every component from ``/`` checked.

    Raises ``UntrustedPathError`` naming the first component another user could
    change, and ``FileNotFoundError`` when a component is missing (``create``: the
    mode of the folders to make instead, checked like the others once made).
    """
    w = _Walk(trusted_owners() if owners is None else owners)
    try:
        w.walk(_parts(path), create)
        yield w.fd
    finally:
        w.close()


def check_dir(path: str | os.PathLike[str]) -> str | None:
    """Why folder ``path`` must not be trusted, or None when it may be."""
    try:
        with trusted_dir(path):
            return None
    except UntrustedPathError as exc:
        return str(exc)
    except OSError as exc:
        return f"{os.fspath(path)}: {exc.strerror}"


def read_at(
    dir_fd: int,
    name: str,
    shown: str,
    limit: int = 256 << 20,
    owners: frozenset[int] | None = None,
) -> bytes:
    """The bytes of regular file ``name`` in a checked folder, opened once with
    ``O_NOFOLLOW`` and checked through that descriptor (owner, mode)."""
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UntrustedPathError(f"{shown} is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedPathError(f"{shown} is not a regular file")
        why = _problem(st, shown, trusted_owners() if owners is None else owners)
        if why is not None:
            raise UntrustedPathError(why)
        if st.st_size > limit:
            raise UntrustedPathError(f"{shown} is larger than {limit} bytes")
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def read_trusted(path: str | os.PathLike[str], limit: int = 256 << 20) -> bytes:
    """The bytes of ``path``: its folder checked from ``/``, the file opened once with
    ``O_NOFOLLOW``, owned by root (or the user) and writable by nobody else."""
    p = os.fspath(path)
    with trusted_dir(os.path.dirname(os.path.abspath(p))) as fd:
        return read_at(fd, os.path.basename(p), p, limit)


# -- outputs -----------------------------------------------------------------------


def parse_mode(text: str) -> int:
    """An octal file mode from the command line (``--mode 0640``), at most 0666."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise UsageError(f"--mode {text!r}: an octal file mode such as 0600 or 0640") from None
    if not 0 <= mode <= 0o666 or mode & stat.S_IRUSR == 0:
        raise UsageError(
            f"--mode {text}: a file mode from 0400 to 0666 that the owner can read "
            "(no execute, set-id or sticky bits)"
        )
    return mode


def _target_problem(dir_fd: int, name: str, shown: str, replace: bool) -> str | None:
    """Why ``name`` in ``dir_fd`` must not be written or replaced, or None."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return f"{printable(shown)} is a symbolic link; tracekit writes no output through one"
    if stat.S_ISDIR(st.st_mode):
        return f"{printable(shown)} is a directory"
    if not stat.S_ISREG(st.st_mode):
        return (
            f"{printable(shown)} is not a regular file (a device, FIFO or socket is never replaced)"
        )
    if not replace:
        return f"{printable(shown)} exists; pass --force to overwrite it"
    return None


def _split(path: str) -> tuple[str, str]:
    parent, name = os.path.split(path)
    if not name or name in (".", ".."):
        raise UsageError(f"cannot write {printable(path)}: not a file name")
    return parent or ".", name


def _open_parent(parent: str, shown: str) -> int:
    try:
        return os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(
            f"cannot write {printable(shown)}: directory {printable(parent)} does not exist"
        ) from None
    except OSError as exc:
        raise UsageError(
            f"cannot write {printable(shown)}: {printable(parent)}: {exc.strerror}"
        ) from None


def _temp_name(name: str) -> str:
    # Beside the target, hidden, unpredictable; short enough for NAME_MAX.
    return f".{name[:180]}.{secrets.token_hex(8)}.tmp"


def _create_temp(dir_fd: int, name: str, mode: int, shown: str) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(8):
        tmp = _temp_name(name)
        try:
            fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
        except FileExistsError:
            continue
        except OSError as exc:
            raise UsageError(f"cannot write {printable(shown)}: {exc.strerror}") from None
        os.fchmod(fd, mode)  # exactly what was asked, whatever the umask
        return fd, tmp
    raise UsageError(f"cannot write {printable(shown)}: no unused temporary name beside it")


def check_output(path: str, replace: bool) -> None:
    """Raise UsageError unless an output can be written at ``path`` (``replace``: an
    existing regular file may be replaced). Checked again when the file is made."""
    parent, name = _split(path)
    fd = _open_parent(parent, path)
    try:
        why = _target_problem(fd, name, path, replace)
        if why is None and not os.access(parent, os.W_OK | os.X_OK):
            why = f"cannot create files in {printable(parent)}"
    finally:
        os.close(fd)
    if why is not None:
        raise UsageError(why)


def create_output(path: str, *, mode: int = DEFAULT_MODE, replace: bool = False) -> int:
    """A new regular file at ``path`` for writing while it grows (a recording), with
    ``mode`` exactly: created with ``O_EXCL | O_NOFOLLOW`` where nothing is; with
    ``replace``, an existing regular file is replaced by renaming a new one over it
    (never truncated, and never through a link)."""
    parent, name = _split(path)
    dir_fd = _open_parent(parent, path)
    try:
        why = _target_problem(dir_fd, name, path, replace)
        if why is not None:
            raise UsageError(why)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, mode, dir_fd=dir_fd)
            os.fchmod(fd, mode)
            return fd
        except FileExistsError:
            if not replace:
                raise UsageError(
                    f"{printable(path)} exists; pass --force to overwrite it"
                ) from None
        except OSError as exc:
            raise UsageError(f"cannot write {printable(path)}: {exc.strerror}") from None
        fd, tmp = _create_temp(dir_fd, name, mode, path)
        try:
            why = _target_problem(dir_fd, name, path, replace)
            if why is not None:
                raise UsageError(why)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        return fd
    finally:
        os.close(dir_fd)


class OutputFile:
    """A file written beside its target and renamed into place when complete.

    ``with OutputFile(path) as f: f.write(...)``: the data goes to a temporary file
    in the target's folder (unpredictable name, ``O_EXCL | O_NOFOLLOW``, ``mode``),
    which is flushed to disk and renamed over ``path`` at the end; on an error it is
    removed and ``path`` is untouched. Without ``replace`` an existing ``path`` is
    refused (and one made meanwhile is never replaced); with it, only a regular file
    is replaced, never a link, device or folder. ``dir_fd``: the target's folder
    already open (a checked one); ``path`` is then a name in it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        mode: int = DEFAULT_MODE,
        replace: bool = False,
        dir_fd: int | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.replace = replace
        if dir_fd is None:
            parent, self.name = _split(self.path)
            self.dir_fd = _open_parent(parent, self.path)
            self._own_dir = True
        else:
            self.name, self.dir_fd, self._own_dir = self.path, dir_fd, False
        self.tmp = ""
        self.file: IO[bytes] | None = None
        # A second descriptor of the temporary file: a writer (pyarrow's) may close
        # the file object it was given; the data is still flushed to disk through this.
        self._sync_fd = -1
        try:
            why = _target_problem(self.dir_fd, self.name, self.path, replace)
            if why is not None:
                raise UsageError(why)
            fd, self.tmp = _create_temp(self.dir_fd, self.name, mode, self.path)
            self._sync_fd = os.dup(fd)
            self.file = os.fdopen(fd, "wb")
        except BaseException:
            self._close_dir()
            raise

    def __enter__(self) -> IO[bytes]:
        assert self.file is not None
        return self.file

    def __exit__(
        self,
        typ: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if typ is None:
            self.commit()
        else:
            self.abort()

    def commit(self) -> None:
        """Flush the file to disk and rename it to the target (once)."""
        if self.file is None:
            return
        f, self.file = self.file, None
        try:
            try:
                if not f.closed:
                    f.flush()
                os.fsync(self._sync_fd)
            finally:
                f.close()
            why = _target_problem(self.dir_fd, self.name, self.path, self.replace)
            if why is not None:
                raise UsageError(why)
            if self.replace:
                os.rename(self.tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            else:
                # A hard link fails if the name was taken meanwhile: never replaced.
                try:
                    os.link(
                        self.tmp,
                        self.name,
                        src_dir_fd=self.dir_fd,
                        dst_dir_fd=self.dir_fd,
                        follow_symlinks=False,
                    )
                except FileExistsError:
                    raise UsageError(
                        f"{printable(self.path)} exists; pass --force to overwrite it"
                    ) from None
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                        raise
                    os.rename(self.tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
                else:
                    os.unlink(self.tmp, dir_fd=self.dir_fd)
            self.tmp = ""
            with contextlib.suppress(OSError):
                os.fsync(self.dir_fd)
        except OSError as exc:
            raise UsageError(
                f"cannot write {printable(self.path)}: {exc.strerror or exc}"
            ) from None
        finally:
            self.abort()

    def abort(self) -> None:
        """Remove the temporary file (the target stays as it was)."""
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None
        if self._sync_fd >= 0:
            os.close(self._sync_fd)
            self._sync_fd = -1
        if self.tmp:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp, dir_fd=self.dir_fd)
            self.tmp = ""
        self._close_dir()

    def _close_dir(self) -> None:
        if self._own_dir and self.dir_fd >= 0:
            os.close(self.dir_fd)
        self.dir_fd = -1


def write_output(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = DEFAULT_MODE,
    replace: bool = False,
    dir_fd: int | None = None,
) -> None:
    """``data`` into ``path`` through an ``OutputFile``."""
    with OutputFile(path, mode=mode, replace=replace, dir_fd=dir_fd) as f:
        f.write(data)


def describe_mode(path: str | Path) -> str:
    """``0600``: a file's permission bits as octal (for messages and tests)."""
    return f"{stat.S_IMODE(os.lstat(path).st_mode):04o}"


__all__ = [
    "DEFAULT_MODE",
    "SAFE_ENV",
    "OutputFile",
    "UntrustedPathError",
    "check_dir",
    "check_output",
    "create_output",
    "elevated",
    "env",
    "parse_mode",
    "read_at",
    "read_trusted",
    "trusted_dir",
    "trusted_owners",
    "write_output",
]
