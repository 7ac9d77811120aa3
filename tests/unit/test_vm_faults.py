"""Which failed raspi3b boots the boot test boots once more (tests/vm.py): emulator faults only."""

from __future__ import annotations

from tests.vm import FATAL, SDHOST_TIMEOUT, VCHIQ_FAILED, raspi3b_emulator_fault


def test_emulator_faults_are_told_apart_from_other_oopses() -> None:
    assert raspi3b_emulator_fault(f"[ 9.1] {SDHOST_TIMEOUT}\n[ 9.2] Internal error: Oops") is not None
    vchiq = f"[ 89.48] bcm2835_vchiq 3f00b840.mailbox: {VCHIQ_FAILED}\n[ 89.55] Internal error: Oops: 96000007"
    assert raspi3b_emulator_fault(vchiq) == "the vchiq driver oopsed after the emulated mailbox refused it"
    # The vchiq failure is in every raspi3b boot: an oops before it is not explained by it.
    assert raspi3b_emulator_fault(f"Internal error: Oops\n{VCHIQ_FAILED}") is None
    assert raspi3b_emulator_fault("Kernel panic - not syncing: VFS") is None


def test_a_boot_stopped_at_grubs_prompt_is_fatal() -> None:
    """Nobody types at GRUB's prompt: the wait ends there instead of after the whole boot bound."""
    console = "\x1b[2;24HGNU GRUB  version 2.06-13+deb12u2\r\n\r   device or file completions.\r\n\rgrub> "
    match = FATAL.search(console)
    assert match is not None and match.group(0) == "grub> "
    assert FATAL.search("error: no such partition.\r\nEntering rescue mode...\r\ngrub rescue> ") is not None
    # GRUB's menu, its messages and a shell mentioning grub are not its prompt.
    for text in ("Use the ^ and v keys to select which entry is highlighted.", "liveng-grub> ",
                 "/boot/grub/grub.cfg", "Welcome to GRUB!", "root@liveng:~# grub-editenv list"):
        assert FATAL.search(text) is None, text
