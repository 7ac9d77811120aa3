"""Drive a VM started with `liveng run` through its serial console, as a person at the terminal would."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path
from types import TracebackType

import pexpect

# The autologin shell prompt of a liveng development image, e.g. "root@liveng:~# ".
LOGIN_PROMPT = re.compile(r"root@[\w-]+:[^\r\n]*# ")
PROMPT = "LIVENG-TEST# "
_END = re.compile(r"@@END(\d+)@@")
_KMSG = re.compile(r"^\[\s*\d+\.\d+\] ")
# A boot that printed one of these will not reach a shell: stop waiting at once instead of at the
# timeout (a hung boot used to hold a CI worker for 25 minutes).
# GRUB's prompts: it found no menu (or no normal mode) and waits for someone at the keyboard.
FATAL = re.compile(r"Kernel panic - not syncing[^\r\n]*|Internal error: Oops[^\r\n]*"
                   r"|Freezing execution[^\r\n]*|(?<![\w-])grub(?: rescue)?> ")
# QEMU's raspi3b SD host controller (bcm2835 sdhost) under heavy TCG load: the kernel's 10 s
# request timer runs out before the emulated DMA completes, and the driver's error path then
# oopses. An emulator timing fault, not the image's: test_rpi_boot boots once more when it sees it.
SDHOST_TIMEOUT = "sdhost-bcm2835 3f202000.mmc: timeout waiting for hardware interrupt"
# QEMU's raspi3b has no VideoCore behind the mailbox: the vchiq driver's probe always fails ("Could
# not initialize vchiq platform"), and now and then its error path then oopses (paging request).
VCHIQ_FAILED = "arm: Could not initialize vchiq platform"


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (QEMU, for `liveng run`)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def raspi3b_emulator_fault(console: str) -> str | None:
    """What QEMU's raspi3b got wrong, when a boot stopped at an oops that follows from it."""
    if SDHOST_TIMEOUT in console:
        return "the emulated SD host timed out"
    if VCHIQ_FAILED in console and "Internal error: Oops" in console.split(VCHIQ_FAILED, 1)[1]:
        return "the vchiq driver oopsed after the emulated mailbox refused it"
    return None


class VmError(AssertionError):
    def __init__(self, message: str, console: str = "") -> None:
        super().__init__(message)
        self.console = console  # what the console printed last, when the error came from it


class Vm:
    def __init__(self, image: Path, log: Path, *, bios: bool = False, snapshot: bool = False,
                 disks: tuple[Path, ...] = (), memory: int = 1024, qmp: Path | None = None,
                 machine: str | None = None, forwards: tuple[str, ...] = (), incoming: Path | None = None,
                 secure_boot: bool = False) -> None:
        args = ["-m", "liveng.host.cli", "run", str(image), "--memory", str(memory)]
        if secure_boot:
            args.append("--secure-boot")
        for fwd in forwards:  # "HOSTPORT:GUESTPORT", TCP on 127.0.0.1
            args += ["--forward", fwd]
        if machine:
            args += ["--machine", machine]
        if bios:
            args.append("--bios")
        if snapshot:
            args.append("--snapshot")
        if incoming:
            args += ["--incoming", str(incoming)]
        for d in disks:
            args += ["--disk", str(d)]
        if qmp:
            args += ["--qmp", str(qmp)]
        self.log = log
        self.qmp_path = qmp
        self._logfile = open(log, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._logfile.write(f"\n===== liveng run {' '.join(args[3:])} =====\n")
        self.started = time.monotonic()
        self.proc = pexpect.spawn(sys.executable, args, encoding="utf-8", codec_errors="replace",
                                  dimensions=(50, 250), timeout=60)
        self.proc.logfile_read = self._logfile

    def wait_shell(self, timeout: float = 900, fatal: re.Pattern[str] | None = FATAL) -> float:
        """Wait for the autologin prompt; return the seconds since power-on (or since the reboot).
        ``fatal``: console output that ends the wait at once (None for a test that expects a panic)."""
        start = self.started
        try:
            index = self.proc.expect([LOGIN_PROMPT, fatal] if fatal else [LOGIN_PROMPT], timeout=timeout)
        except (pexpect.TIMEOUT, pexpect.EOF) as exc:
            what = "the VM exited" if isinstance(exc, pexpect.EOF) else f"no shell prompt within {timeout} s"
            raise VmError(f"{what}; console log: {self.log}", str(self.proc.before)[-4000:]) from exc
        if index == 1:
            seen = str(self.proc.before)[-4000:] + str(self.proc.after)
            raise VmError(f"the boot failed after {time.monotonic() - start:.0f} s: {self.proc.after!s}; "
                          f"console log: {self.log}", seen)
        elapsed = time.monotonic() - start
        # A quiet, predictable shell: no echo, no bracketed paste, a fixed prompt.
        self.proc.sendline("dmesg -n 1; stty -echo cols 1000 rows 50; "
                           "bind 'set enable-bracketed-paste off' 2>/dev/null; "
                           f"export TERM=dumb PS1='{PROMPT[:6]}''{PROMPT[6:]}'")  # split: the echo must not match
        self.proc.expect_exact(PROMPT, timeout=60)
        return elapsed

    def pump(self, seconds: float) -> None:
        """Read the console for ``seconds`` (into the log; what it printed stays for the next wait)
        without waiting for anything: a guest whose console nobody reads stalls on its serial port
        once the terminal's buffer is full."""
        self.proc.expect([pexpect.TIMEOUT], timeout=seconds)

    def sh(self, command: str, timeout: float = 300, check: bool = True) -> str:
        """Run a shell command in the guest; return its output (stdout and stderr)."""
        self.proc.sendline(f"echo @@BEG''IN@@; {{ {command} ; }} 2>&1; echo @@END$?@@")
        try:
            self.proc.expect_exact("@@BEGIN@@", timeout=timeout)
            self.proc.expect(_END, timeout=timeout)
        except (pexpect.TIMEOUT, pexpect.EOF) as exc:
            raise VmError(f"command did not finish: {command!r}; console log: {self.log}") from exc
        text = str(self.proc.before).replace("\r", "")
        # Kernel messages printed before `dmesg -n 1` took effect can land in the middle.
        out = "\n".join(line for line in text.split("\n") if not _KMSG.match(line)).strip("\n")
        match = self.proc.match
        assert isinstance(match, re.Match)
        rc = int(match.group(1))
        self.proc.expect_exact(PROMPT, timeout=60)
        if check and rc != 0:
            raise VmError(f"{command!r} exited {rc}:\n{out}")
        return out

    def reboot(self, timeout: float = 900) -> float:
        self.proc.sendline("sync; systemctl reboot")
        self.started = time.monotonic()
        return self.wait_shell(timeout)

    def poweroff(self, timeout: float = 300) -> None:
        self.proc.sendline("sync; systemctl poweroff")
        try:
            self.proc.expect(pexpect.EOF, timeout=timeout)
        except pexpect.TIMEOUT as exc:
            raise VmError(f"the VM did not power off within {timeout} s") from exc
        self.close()

    def _kill_group(self) -> None:
        """SIGKILL to QEMU, then to what is left of the process group.

        QEMU goes first so that `liveng run` sees it end and removes its temporary firmware
        variables (64 MiB a boot: killed with QEMU, it left one copy per round in /tmp)."""
        pid = self.proc.pid
        if pid is None:
            return
        for child in _children(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while self.proc.isalive() and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)

    def power_cut(self) -> None:
        """Kill QEMU at once, as pulling the plug would."""
        self._kill_group()
        self.proc.expect(pexpect.EOF, timeout=30)
        self.close()

    def close(self) -> None:
        if self.proc.isalive():
            self._kill_group()
            self.proc.terminate(force=True)
        if not self._logfile.closed:
            self._logfile.close()

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
