"""Slot choice and boot-order rules of the device's kernel command (no device needed)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from liveng import layout
from liveng.device import bootstate, kernel, slots, verify
from liveng.device.bootstate import BootState, DeviceError
from liveng.device.kernel import confirmed_order, normalized, target_slot


def state(order: str) -> BootState:
    return BootState(order=tuple(order.split()), tries=2, good=None)


def test_update_never_overwrites_the_running_slot() -> None:
    assert target_slot(state("slot-a factory"), "slot-a") == "b"
    assert target_slot(state("slot-b slot-a factory"), "slot-a") == "b"  # a pending update is replaced
    assert target_slot(state("slot-b slot-a factory"), "slot-b") == "a"


def test_update_from_the_factory_kernel_uses_an_unused_slot() -> None:
    assert target_slot(state("factory"), "factory") == "a"
    assert target_slot(state("slot-a factory"), "factory") == "b"
    assert target_slot(state("slot-b factory"), None) == "a"


def test_order_is_normalized() -> None:
    assert normalized(["slot-b", "slot-a", "slot-b", "junk", "factory"]) == ("slot-b", "slot-a", "factory")
    assert normalized([]) == ("factory",)


def test_good_boot_drops_only_broken_entries_in_front() -> None:
    order = ("slot-a", "slot-b", "factory")
    # GRUB could not load slot A and fell back to B: A is dropped.
    assert confirmed_order(order, "slot-b", lambda e: e != "slot-a") == ("slot-b", "factory")
    # Both slots broken, the factory kernel came up.
    assert confirmed_order(order, "factory", lambda e: e == "factory") == ("factory",)
    # A person chose the factory kernel at the menu: the intact slots keep their places.
    assert confirmed_order(order, "factory", lambda e: True) == order
    # The preferred entry itself booted: nothing changes.
    assert confirmed_order(order, "slot-a", lambda e: False) == order
    # An entry the order does not list (chosen by hand) does not become the preferred one.
    assert confirmed_order(("slot-a", "factory"), "slot-b", lambda e: True) == ("slot-a", "factory")


def test_rollback_refuses_a_damaged_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    updates: list[dict[str, object]] = []
    monkeypatch.setattr(bootstate, "read_state", lambda: state("slot-a slot-b factory"))
    monkeypatch.setattr(bootstate, "update_state", lambda **kw: updates.append(kw))
    monkeypatch.setattr(kernel, "booted_entry", lambda: "slot-a")
    monkeypatch.setattr(slots, "read_slot", lambda name: slots.SlotInfo(name, "6.12.9", "now", {"x": "0" * 64}))
    monkeypatch.setattr(verify, "intact", lambda name: False)
    with pytest.raises(DeviceError, match=r"slot B .* is damaged: its files do not match"):
        kernel.rollback()
    assert updates == []
    monkeypatch.setattr(verify, "intact", lambda name: name == "b")
    assert "slot B (kernel 6.12.9) boots next" in kernel.rollback()
    assert updates and updates[0]["order"][0] == "slot-b"  # type: ignore[index]


@pytest.mark.parametrize("text", ["[]", '{"files": 3}', "{not json"])
def test_a_damaged_slot_json_reads_as_an_empty_slot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    text: str) -> None:
    (tmp_path / "liveng").mkdir()
    (tmp_path / layout.SLOT_INFO_PATH).write_text(text)

    @contextlib.contextmanager
    def mounted(role: layout.Role, fstype: str) -> Iterator[Path]:
        yield tmp_path

    monkeypatch.setattr(slots, "device_path", lambda role: tmp_path / "dev")
    monkeypatch.setattr(slots, "run", lambda argv: "iso9660\n")
    monkeypatch.setattr(slots, "mounted", mounted)
    assert slots.read_slot("b") == slots.SlotInfo("b", None, None, {})
