"""Files root writes on behalf of a user (~/.ssh/authorized_keys), without following the user's links.

A user owns their home and ~/.ssh, so anything in there may be a symlink to /etc/shadow, placed there
before root writes. Every directory is opened with O_NOFOLLOW relative to the one before it (dir_fd),
the temporary file is created with O_EXCL|O_NOFOLLOW inside the directory's descriptor and renamed
within that descriptor, so that no path is looked up twice and no link is ever followed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from liveng.settings import SettingsError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_CAP = 1024 * 1024  # an authorized_keys file larger than this is not one liveng wrote


def _open_dir(parent: int, name: str, what: str) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        raise SettingsError(f"{what} is not a plain directory ({exc.strerror}): a symbolic link or a file there "
                            "is refused; move it away and boot again") from None


@contextlib.contextmanager
def user_dir(root: Path, home: str, sub: str, owner: tuple[int, int]) -> Iterator[int]:
    """A descriptor of HOME/SUB under ``root``, made if missing (mode 0700, the user's), refused when a
    component is a symbolic link or HOME/SUB belongs to someone else."""
    fds: list[int] = []
    try:
        fds.append(os.open(root, DIR_FLAGS & ~os.O_NOFOLLOW))
        parts = [p for p in home.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts) or any(p in (".", "..", "") for p in sub.split("/")):
            raise SettingsError(f"home directory {home!r}: not an absolute path liveng can write under")
        for i, name in enumerate([*parts, *sub.split("/")]):
            path = "/" + "/".join([*parts, *sub.split("/")][: i + 1])
            if i >= len(parts) - 1:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=fds[-1])
                    fd = _open_dir(fds[-1], name, path)
                    os.fchown(fd, *owner)
                    os.close(fd)
            fds.append(_open_dir(fds[-1], name, path))
            st = os.fstat(fds[-1])
            allowed = (owner[0], 0) if i == len(parts) - 1 else (owner[0],)
            if i >= len(parts) - 1 and st.st_uid not in allowed:
                raise SettingsError(f"{path} belongs to uid {st.st_uid}, not to its user (uid {owner[0]}): "
                                    "liveng does not write there; fix its owner and boot again")
        yield fds[-1]
    finally:
        for fd in reversed(fds):
            os.close(fd)


def read_text(dir_fd: int, name: str, what: str) -> str:
    """A user's regular file in ``dir_fd`` ('' if missing); links and special files are refused."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise SettingsError(f"{what}: cannot be read ({exc.strerror}): a symbolic link there is refused; "
                            "replace it with a plain file") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SettingsError(f"{what}: not a plain file: move it away and boot again")
        data = f.read(READ_CAP + 1)
    if len(data) > READ_CAP:
        raise SettingsError(f"{what}: larger than {READ_CAP} bytes: not an authorized_keys file liveng can extend")
    return data.decode(errors="replace")


def write_file(dir_fd: int, name: str, data: bytes, mode: int, owner: tuple[int, int]) -> None:
    """Replace ``name`` in ``dir_fd`` whole (temporary name, fsync, rename), never through a link."""
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        try:
            os.fchown(fd, *owner)
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


def unsafe(root: Path, home: str, uid: int) -> str | None:
    """Why keys cannot be added under ``home`` (a link or someone else's ~/.ssh), checked before anything
    is applied; write_file refuses the same things again, race or not."""
    ssh = root / home.strip("/") / ".ssh"
    for path, shown in ((root / home.strip("/"), home), (ssh, f"{home}/.ssh"),
                        (ssh / "authorized_keys", f"{home}/.ssh/authorized_keys")):
        if path.is_symlink():
            return f"{shown} is a symbolic link: move it away"
    if ssh.is_dir() and ssh.lstat().st_uid != uid:
        return f"{home}/.ssh belongs to uid {ssh.lstat().st_uid}, not to its user (uid {uid}): fix its owner"
    return None
