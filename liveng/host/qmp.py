"""A small QMP client (QEMU's JSON monitor) for `liveng run --qmp SOCKET`: block statistics and
removing the card from a running VM, for the wear benchmark and the RAM-mode tests; what the VM's
display shows (screendump), for the signage example's test."""

from __future__ import annotations

import json
import shlex
import socket
import time
from pathlib import Path
from typing import Any

from liveng.host.errors import LivengError

# liveng run names the image's drive disk0 (and further --disk images disk1, ...).
CARD = "disk0"


class QmpError(LivengError):
    """QEMU's monitor is not there or refused a command."""


class Qmp:
    def __init__(self, path: Path, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise QmpError(f"{path}: no QMP socket (is QEMU running with --qmp?)") from None
                time.sleep(0.2)
        self.file = self.sock.makefile("rwb")
        self._read()  # the greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while True:
            line = self.file.readline()
            if not line:
                raise QmpError("QEMU closed the QMP connection")
            msg: dict[str, Any] = json.loads(line)
            if "event" not in msg:
                return msg

    def execute(self, command: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        reply = self._read()
        if "error" in reply:
            raise QmpError(f"{command}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def written(self, drive: str = CARD) -> int:
        """Bytes the guest has written to ``drive`` since QEMU started."""
        for entry in self.execute("query-blockstats"):
            if entry.get("device") == drive:
                return int(entry["stats"]["wr_bytes"])
        raise QmpError(f"query-blockstats: no drive {drive}")

    def remove_card(self, drive: str = CARD) -> None:
        """Take the medium away from the running guest: every later read or write of it fails (EIO),
        as with a card pulled out. (drive_del: QEMU's disk device stays, its backend goes.)"""
        out = self.execute("human-monitor-command", **{"command-line": f"drive_del {drive}"})
        if out:  # the human monitor answers errors as text
            raise QmpError(f"drive_del {drive}: {out.strip()}")

    def screendump(self, path: Path, fmt: str = "ppm") -> None:
        """Write what the VM's display shows now to ``path``: ``ppm`` (binary P6, easy to read back) or
        ``png``. QEMU writes the file itself, so ``path`` is on this machine and must be writable."""
        if fmt not in ("ppm", "png"):
            raise QmpError(f"screendump: format {fmt!r} is not ppm or png")
        tmp = path.with_name(f".{path.name}.tmp")
        self.execute("screendump", filename=str(tmp), format=fmt)
        tmp.replace(path)

    def save_state(self, path: Path, timeout: float = 600) -> None:
        """Stop the guest and write its whole state (RAM, devices) to ``path``, for `liveng run
        --incoming`. QEMU flushes the disks when it stops, so a copy of them taken afterwards
        belongs to this state. The guest stays stopped."""
        self.execute("stop")
        tmp = path.with_name(f".{path.name}.tmp")
        self.execute("migrate", uri=f"exec:cat > {shlex.quote(str(tmp))}")
        deadline = time.monotonic() + timeout
        while True:
            status = self.execute("query-migrate").get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled") or time.monotonic() > deadline:
                raise QmpError(f"saving the VM state to {path}: migration {status}")
            time.sleep(0.2)
        tmp.replace(path)

    def close(self) -> None:
        self.file.close()
        self.sock.close()
