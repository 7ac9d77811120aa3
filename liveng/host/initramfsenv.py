"""layout.py as shell assignments: the front of /scripts/liveng-functions, which liveng's initramfs
scripts source (written at image build by rootfs.py), so that the shell retypes nothing."""

from __future__ import annotations

import shlex

from liveng import durable, layout


def initramfs_constants() -> str:
    """Every name the initramfs scripts use, as NAME='value' lines."""
    values = {
        "LIVENG_ARG_ID": layout.KERNEL_ARG_ID,
        "LIVENG_ARG_MODE": layout.KERNEL_ARG_MODE,
        "LIVENG_ARG_PATHS": layout.KERNEL_ARG_PATHS,
        "LIVENG_ARG_RESET": layout.KERNEL_ARG_RESET,
        "LIVENG_PARTUUID_DIR": layout.PARTUUID_DIR,
        "LIVENG_SYSTEM_SUFFIX": layout.partuuid_suffix(layout.partition(layout.Role.SYSTEM).number),
        "LIVENG_PERSISTENCE_SUFFIX": layout.partuuid_suffix(layout.partition(layout.Role.PERSISTENCE).number),
        "LIVENG_DELTA_DIR": layout.DELTA_DIR,
        "LIVENG_WORK_DIR": layout.DELTA_WORK_DIR,
        "LIVENG_STATE_DIR": layout.DELTA_STATE_DIR,
        "LIVENG_SNAPSHOT_DIR": layout.SNAPSHOT_DIR,
        "LIVENG_STAGED_DIR": layout.STAGED_DIRS[0],
        "LIVENG_STAGED_NEXT_DIR": layout.STAGED_DIRS[1],
        "LIVENG_OLD_DELTA_DIR": layout.OLD_DELTA_DIR,
        "LIVENG_RESET_DELTA_DIR": layout.RESET_DELTA_DIR,
        "LIVENG_PENDING_PATH": layout.PENDING_PATH,
        "LIVENG_SWITCH_PATH": layout.SWITCH_PATH,
        "LIVENG_PATHS_PATH": layout.PATHS_PATH,
        "LIVENG_PATHS_WORK_DIR": layout.PATHS_WORK_DIR,
        "LIVENG_RAM_PERSISTENCE_MOUNT": layout.RAM_PERSISTENCE_MOUNT,
        "LIVENG_MODE_RAM": layout.MODE_RAM,
        "LIVENG_MODE_RAM_PATHS": layout.MODE_RAM_PATHS,
        "LIVENG_KEY_FILE": f"/{layout.KEY_FILE_PATH}",
        "LIVENG_TAR": f"/{layout.INITRAMFS_TAR_PATH}",
        "LIVENG_ARG_BOOT": layout.KERNEL_ARG_BOOT,
        "LIVENG_SLOT_A_SUFFIX": layout.partuuid_suffix(layout.partition(layout.Role.SLOT_A).number),
        "LIVENG_SLOT_B_SUFFIX": layout.partuuid_suffix(layout.partition(layout.Role.SLOT_B).number),
        "LIVENG_ENTRY_SLOT_A": layout.ENTRY_SLOT["a"],
        "LIVENG_ENTRY_SLOT_B": layout.ENTRY_SLOT["b"],
        "LIVENG_SYSTEM_FACTORY": layout.SYSTEM_FACTORY,
        "LIVENG_SYSTEMS_DIR": layout.SYSTEMS_DIR,
        "LIVENG_SYSTEM_ISO": layout.SYSTEM_ISO_NAME,
        "LIVENG_DELTAS_DIR": layout.DELTAS_DIR,
        "LIVENG_OWNER_PREFIX": layout.DELTA_OWNER_PREFIX,
        "LIVENG_SLOT_SYSTEM_PATH": layout.SLOT_SYSTEM_PATH,
        "LIVENG_BOOTED_SYSTEM": layout.BOOTED_SYSTEM_PATH,
        "LIVENG_RESERVE_DIR": layout.RESERVE_DIR,
        "LIVENG_RESERVE_FILES": str(layout.RESERVE_FILES),
        "LIVENG_RESERVE_RELEASE_BELOW": str(layout.RESERVE_RELEASE_BELOW),
        "LIVENG_RESERVE_REFILL_FROM": str(layout.RESERVE_REFILL_FROM),
        "LIVENG_INODES_NEEDED": str(layout.INODES_NEEDED),
        "LIVENG_NOTICE": layout.INITRAMFS_NOTICE_PATH,
        "LIVENG_P7_FSCK_LOG": layout.P7_FSCK_LOG_PATH,
        "LIVENG_P7_UNCLEAN": layout.P7_UNCLEAN_PATH,
        "LIVENG_ROOM_RAM": layout.ROOM_RAM_PATH,
        "LIVENG_P7_MOUNT_DEFAULTS": durable.PERSISTENCE_MOUNT_DEFAULTS,
    }
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items())
