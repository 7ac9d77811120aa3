"""apt's files after an unclean shutdown: what apt wrote without fsync and trusts afterwards.

apt writes its downloads (.debs in /var/cache/apt/archives, package lists in /var/lib/apt/lists) and
extended_states to a temporary name and renames them, without fsync. On p7's ext4 (data=ordered,
nodelalloc) a power cut can leave such a file at its full size with the tail of some blocks never
written: the campaign's seed 1032437738 left a cached .deb with 43 blocks ending in 139 zero bytes,
and an extended_states apt could not parse. apt trusts a cached .deb of the right size and a list
its InRelease named, so every apt command failed until its owner cleaned up by hand.

At the boot after an unclean shutdown (live-premount/liveng-p7 leaves layout.P7_UNCLEAN_PATH),
liveng-apt-recover.service, before any login or apt timer: the cached .debs and partial downloads go
(apt downloads them again), apt's binary caches go (apt makes them again), a list whose size or
SHA256 is not what its InRelease (or Release) says goes with that file (the next `apt-get update`
fetches them again), and an extended_states apt cannot parse is moved aside. It holds apt's own locks
meanwhile. dpkg's database needs none of this: dpkg fsyncs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ARCHIVES = "var/cache/apt/archives"
LISTS = "var/lib/apt/lists"
BINARY_CACHES = ("var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin")
EXTENDED_STATES = "var/lib/apt/extended_states"
SET_ASIDE_SUFFIX = ".liveng-unreadable"
# apt's own lock files (apt-pkg's GetLock: fcntl record locks, which fcntl.lockf takes too).
LOCKS = ("var/lib/dpkg/lock-frontend", f"{LISTS}/lock", f"{ARCHIVES}/lock")

_FIELD = re.compile(r"[^\s:#][^:]*:")


@dataclass
class Report:
    removed: list[str] = field(default_factory=list)
    set_aside: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"removed {p}" for p in self.removed]
        out += [f"{p} could not be parsed: moved to {p}{SET_ASIDE_SUFFIX} (packages installed as "
                "dependencies now count as installed by hand; `apt-mark auto PACKAGE` marks them again)"
                for p in self.set_aside]
        return out


def recover(root: Path = Path("/"), say: Callable[[str], None] = lambda _: None) -> Report:
    """Check and clean apt's unsynced files under ``root``; what was done, each also said."""
    report = Report()
    with _apt_locks(root):
        for path in _cached_downloads(root):
            _remove(path, root, report)
        for name in BINARY_CACHES:
            _remove(root / name, root, report)
        for path in _stale_lists(root / LISTS):
            _remove(path, root, report)
        states = root / EXTENDED_STATES
        if not _parses(states):
            os.replace(states, states.with_name(states.name + SET_ASIDE_SUFFIX))
            report.set_aside.append(f"/{EXTENDED_STATES}")
        os.sync()  # what was cleaned stays cleaned if the power goes again
    for line in report.lines():
        say(line)
    return report


@contextlib.contextmanager
def _apt_locks(root: Path) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for name in LOCKS:
            path = root / name
            if not path.parent.is_dir():
                continue
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
            stack.callback(os.close, fd)
            fcntl.lockf(fd, fcntl.LOCK_EX)  # waits for an apt or dpkg that holds it
        yield


def _cached_downloads(root: Path) -> Iterator[Path]:
    """The .debs in apt's cache, and whatever its partial/ directories hold (apt resumes those)."""
    for directory, only_debs in ((ARCHIVES, True), (f"{ARCHIVES}/partial", False), (f"{LISTS}/partial", False)):
        with contextlib.suppress(FileNotFoundError), os.scandir(root / directory) as entries:
            for entry in entries:
                if entry.name.endswith(".deb") if only_debs else entry.is_file(follow_symlinks=False):
                    yield Path(entry.path)


def _remove(path: Path, root: Path, report: Report) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
        report.removed.append("/" + str(path.relative_to(root)))


def _stale_lists(lists: Path) -> Iterator[Path]:
    """Each list an InRelease (or a Release, with its Release.gpg if signed, for a source that has
    no InRelease) names whose size or SHA256 differs, with that release file; a release file that is
    itself torn (NUL bytes, no whole signature) with every list of its source."""
    try:
        names = sorted(p.name for p in lists.iterdir() if p.is_file() and not p.is_symlink())
    except FileNotFoundError:
        return
    for release in names:
        if release.endswith("_InRelease"):
            prefix = release[: -len("InRelease")]
            entries = _release_hashes((lists / release).read_bytes())
            own = [release]
        elif release.endswith("_Release") and f"{release[: -len('Release')]}InRelease" not in names:
            prefix = release[: -len("Release")]
            signature = lists / f"{release}.gpg"
            entries = _release_hashes((lists / release).read_bytes(), signed=False)
            # No Release.gpg at all: an unsigned source (`[trusted=yes]`), its Release the authority.
            if signature.is_file() and not _whole_signature(signature.read_bytes()):
                entries = None
            own = [release, signature.name]
        else:
            continue
        if entries is None:
            yield from (lists / n for n in names if n.startswith(prefix))
            continue
        stale = [n for n in names if n.startswith(prefix) and n[len(prefix):] in entries
                 and not _matches(lists / n, *entries[n[len(prefix):]])]
        yield from (lists / n for n in stale)
        if stale:
            yield from (lists / n for n in own if n in names)


def _whole_signature(text: bytes) -> bool:
    return b"\0" not in text and text.rstrip().endswith(b"-----END PGP SIGNATURE-----")


def _release_hashes(text: bytes, signed: bool = True) -> dict[str, tuple[int, str]] | None:
    """{list file name after its source's prefix, as apt stores it: (size, sha256)} from an
    InRelease (``signed``) or a Release; None when torn.

    The signature was checked by apt when it downloaded the file; here only its wholeness matters."""
    if b"\0" in text or (signed and not _whole_signature(text)):
        return None
    entries: dict[str, tuple[int, str]] = {}
    in_sha256 = False
    for line in text.decode(errors="replace").splitlines():
        if not line.startswith(" "):
            in_sha256 = line.strip() == "SHA256:"
            continue
        parts = line.split()
        if in_sha256 and len(parts) == 3 and parts[1].isdigit():
            entries[parts[2].replace("/", "_")] = (int(parts[1]), parts[0])
    return entries


def _matches(path: Path, size: int, sha256: str) -> bool:
    if path.stat().st_size != size:
        return False
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest() == sha256


def _parses(path: Path) -> bool:
    """Whether apt's deb822 parser would take ``path`` (or it is absent)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return True
    if b"\0" in data:
        return False
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return False
    for paragraph in re.split(r"\n\s*\n", text.strip("\n")):
        lines = paragraph.splitlines()
        if lines and not all(_FIELD.match(x) or (i > 0 and x[:1] in (" ", "\t")) for i, x in enumerate(lines)):
            return False
    return True
