"""The format of a pending request on p7 (layout.PENDING_PATH): what the running system stages
(liveng/device/delta.py), what the initramfs switches in (live-premount/liveng-delta reads these
key=value lines with the shell's read) and what the host's inspect shows (liveng/host/inspect.py).

Standard library only: this module is installed inside every image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from liveng import layout

_KEY_RE = re.compile(r"^[a-z_]+$")


class RequestError(ValueError):
    """A request file that cannot be read; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Request:
    action: str  # layout.ACTION_RESTORE, ACTION_RESET or ACTION_COMMIT
    snapshot: str = ""  # what a restore restores: a snapshot name or an archive path
    delete_snapshots: bool = False
    created: str = ""
    order: str = ""  # the boot order (grubenv numbers) before the request, put back by a cancel
    keep: str = ""  # a commit in ram-paths mode: the persistent paths (comma-separated), kept from the old delta
    staged: str = layout.STAGED_DIR  # which of layout.STAGED_DIRS holds the new delta (absent: the first)

    def text(self) -> str:
        # key=value lines: the initramfs reads them with the shell's read, no JSON parser there.
        return (f"action={self.action}\nsnapshot={self.snapshot}\n"
                f"delete_snapshots={int(self.delete_snapshots)}\ncreated={self.created}\norder={self.order}\n"
                f"keep={self.keep}\nstaged={self.staged}\n")

    def describe(self) -> str:
        if self.action == layout.ACTION_COMMIT:
            what = "commit of the RAM delta" + (f" ({self.snapshot})" if self.snapshot else "")
            return f"{what}, made {self.created or 'at an unknown time'}, switched in at the next boot"
        if self.action == layout.ACTION_RESTORE:
            what = f"restore of snapshot {self.snapshot}"
        else:
            what = "factory reset" + (" (snapshots deleted too)" if self.delete_snapshots else "")
        return f"{what}, requested {self.created or 'at an unknown time'}, applied at the next boot"


def parse_request(text: str) -> Request:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not _KEY_RE.fullmatch(key) or "\n" in value:
            raise RequestError(f"{layout.PENDING_PATH}: malformed line {line!r}; cancel it with 'liveng cancel'")
        fields[key] = value
    action = fields.get("action", "")
    if action not in (layout.ACTION_RESTORE, layout.ACTION_RESET, layout.ACTION_COMMIT):
        raise RequestError(f"{layout.PENDING_PATH}: unknown action {action!r}; cancel it with 'liveng cancel'")
    if action == layout.ACTION_RESTORE and not fields.get("snapshot"):
        raise RequestError(f"{layout.PENDING_PATH}: a restore without a snapshot; cancel it with 'liveng cancel'")
    if fields.get("delete_snapshots", "0") not in ("0", "1"):
        raise RequestError(f"{layout.PENDING_PATH}: delete_snapshots must be 0 or 1")
    staged = fields.get("staged") or layout.STAGED_DIR  # requests staged before the key existed
    if staged not in layout.STAGED_DIRS:
        raise RequestError(f"{layout.PENDING_PATH}: staged={staged!r} is not one of {', '.join(layout.STAGED_DIRS)}; "
                           "cancel it with 'liveng cancel'")
    return Request(action=action, snapshot=fields.get("snapshot", ""),
                   delete_snapshots=fields.get("delete_snapshots") == "1", created=fields.get("created", ""),
                   order=fields.get("order", ""), keep=fields.get("keep", ""), staged=staged)
