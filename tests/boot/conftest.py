"""Boot tests: build real Debian images from the mirror and boot them in QEMU (TCG)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from liveng import bundle, layout
from liveng.host.cli import main
from liveng.host.disk import read_table
from tests.boot import golden

# Test images are development images (serial autologin). The kernel arguments and the
# uncompressed squashfs only make boots under TCG faster (bench/RESULTS.md): page zeroing and
# squashfs decompression in the first page faults dominate there. norandmaps halves a boot under
# QEMU 7.2's TCG: with address space randomisation every process of the initramfs (live-boot runs
# thousands) gets its code translated anew, the translations pile up on the same physical pages,
# and when those pages are reused after the switch to the real root QEMU discards them one list
# walk at a time, quadratic in their number (the "soft lockup" of PID 1, 50-60 s; bench/RESULTS.md).
TEST_CMDLINE = ["init_on_alloc=0", "transparent_hugepage=never", "norandmaps", "quiet"]


# Minutes each boot test held a CI worker on a 2-core TCG machine (bench/RESULTS.md), with the image
# build or golden it usually makes: .ci/run hands the tests out in this order (xdist's loadgroup with
# --no-loadscope-reorder, every test its own unit), longest first, so that the two workers end close
# together. A cost table, not a contract: tests not in it go last, in file order.
MINUTES = {
    # 2026-12-06, CI run of fffabf8 (bench/RESULTS.md), setup included where the test made it.
    "test_virt_uefi_kernel_update_system_update_and_fallback": 14,  # the rpi image via qemu-user; estimate
    # 2026-12-06, secure-boot branch, image build included: 17.4 min at load 6-7 (4 VMs on the 2 cores),
    # 15.1 min at load 3.5-7 with a cold rootfs (2.2 min); 13.6 min at load 2-3 for a version with one
    # boot more (~2.2 min). It replaced test_apt_kernel_update_and_fallback in CI (4.1; now
    # LIVENG_LONG_TESTS only).
    "test_secure_boot_signed_kernel_update_refused_and_counting": 12,
    "test_damaged_grubenv_boots_is_repaired_and_counting_goes_on": 2.7,  # 2026-12-06: 157 s (7.8 min with every boot)
    "test_unconfirmed_kernel_is_dropped_then_broken_slot_skipped": 6.4,
    "test_ram_modes": 8.5,  # 2026-12-06: +1 reboot into an updated system (estimate)
    "test_luks_persistence": 6.5,  # 2026-12-06: 9.2 with the v2 update (now LIVENG_LONG_TESTS only)
    # test_seeds.py, 2026-12-06, from the UEFI golden with 2 reboots: 4.8 min at load 3-6, 8.8 at load 6.5;
    # the second reboot (malformed user-data, ~70-90 s) now LIVENG_LONG_TESTS only.
    "test_imager_files_preseed_and_a_cloud_localds_seed": 4.8,
    "test_snapshot_reset_restore": 4.3,
    "test_bookworm_image_boots": 4,  # estimate: a cold bookworm rootfs and one UEFI boot
    "test_power_cuts_during_system_updates": 4,  # estimate, 1 round
    "test_update_keeps_data_refuses_bad_bundles_and_boots_v2": 3.5,
    "test_uefi_then_bios_boot_keep_the_delta": 2.9,
    "test_update_failing_its_health_check_gives_v1_back": 2.5,
    "test_resize_power_cut_verify_and_menu_reset": 2.3,
    "test_power_cuts_during_commit": 2.3,
    "test_raspi3b_uboot_boot_keeps_the_delta": 2.0,
    "test_install_to_a_second_disk": 1.7,
    "test_settings_file_ssh_and_host_keys": 1.6,
    "test_power_cuts_during_kernel_updates": 1.4,
    "test_fault_rounds": 0.1,  # skipped in CI (LIVENG_FAULTS_ROUNDS, LIVENG_LONG_TESTS)
    "test_no_free_inode_on_p7_still_boots": 1.6,  # one campaign round (2026-12-06: 92 s)
    "test_reserve_used_up_boots_as_ram_mode_then_persistent_again": 1.6,  # 2026-12-06: 96 s (156 with the way back)
    "test_appliance_recipe_builds_with_repository_deb_services_tree_and_script": 1.4,
    "test_files_replaced_without_fsync_survive_a_power_cut": 1.7,  # 2026-12-06: 102 s (resume, a cut, a cold boot)
    "test_a_torn_last_journal_commit_still_boots_with_the_delta": 1.7,  # session 11: as the one above (estimate)
    "test_a_card_made_before_p7s_mount_options_gets_them": 1.2,  # session 11: one BIOS boot (estimate)
    "test_a_torn_p7_ebr_is_rewritten_and_the_delta_comes_back": 0.1,  # LIVENG_LONG_TESTS: 2 boots, 2.8 min
}


# A whole run's peak, warm rootfs caches: 9.3 GB (2026-12-07, bench/RESULTS.md), with each passed
# test's directory removed as it ends (pyproject.toml); cold caches add their tarballs elsewhere.
FREE_NEEDED = 12 << 30

_config: list[pytest.Config] = []


def pytest_configure(config: pytest.Config) -> None:
    _config.append(config)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Every boot test's phases with wall-clock times, appended by each xdist worker to one file
    # beside the run's images (timeline.tsv): the per-test table of a CI run, readable after it.
    factory = getattr(_config[0], "_tmp_path_factory", None) if _config else None
    if factory is None:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "-")
    line = (f"{time.strftime('%H:%M:%S', time.localtime(report.start))}\t{worker}\t{report.when}\t"
            f"{report.duration:.1f}\t{report.outcome}\t{report.nodeid}\n")
    with open(golden.shared_dir(factory) / "timeline.tsv", "a", encoding="utf-8") as f:
        f.write(line)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: -MINUTES.get(getattr(item, "originalname", item.name), 0))  # stable


def recipe_text(suite: str, compression: str, target: str, extra: str = "") -> str:
    cmdline = ", ".join(f'"{a}"' for a in TEST_CMDLINE)
    return (f'target = "{target}"\nsuite = "{suite}"\nautologin = true\ngrub_timeout = 1\n'
            f'compression = "{compression}"\ncmdline = [{cmdline}]\n{extra}')


def build_image(workdir: Path, suite: str, name: str, compression: str = "none", target: str = "pc",
                extra: str = "") -> Path:
    """``extra``: more recipe text (tables), after the keys every test image has. Built once per run:
    a worker that finds it built (by another xdist worker) takes it."""
    workdir.mkdir(parents=True, exist_ok=True)
    recipe = workdir / f"{name}.toml"
    image = workdir / f"{name}.img"
    with golden.locked(image):
        if not image.exists():
            recipe.write_text(recipe_text(suite, compression, target, extra))
            # A cached rootfs however old: the mirror's updates are not what the boot tests test.
            # No Imager manifest: its SHA-256 of the whole image costs seconds per build (unit-tested instead).
            assert main(["build", str(recipe), "-o", str(image), "--cached-rootfs", "--no-imager-manifest"]) == 0
    return image


def partition_hash(image: Path, role: layout.Role, table_of: Path | None = None) -> str:
    """SHA-256 of one partition of ``image``, found in ``table_of``'s partition table (default: its own;
    another image's when ``image``'s table may itself be damaged)."""
    entry = read_table(table_of or image).entry(layout.partition(role).number)
    h = hashlib.sha256()
    with open(image, "rb") as f:
        f.seek(entry.start)
        left = entry.size
        while left:
            chunk = f.read(min(left, 1 << 22))
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def persistence_needs_recovery(image: Path) -> bool:
    """Whether p7's ext4 was left with its journal to replay (e2fsck's "needs_recovery"): the
    superblock's incompatible-feature flag RECOVER, set while mounted, cleared by a clean unmount."""
    entry = read_table(image).entry(layout.partition(layout.Role.PERSISTENCE).number)
    with open(image, "rb") as f:
        f.seek(entry.start + 1024)
        sb = f.read(1024)
    assert int.from_bytes(sb[0x38:0x3A], "little") == 0xEF53, f"{image}: p7 holds no ext4 superblock"
    return bool(int.from_bytes(sb[0x60:0x64], "little") & 0x0004)


@pytest.fixture(scope="session")
def boot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images and goldens of this run, shared by the xdist workers."""
    if os.geteuid() != 0:
        pytest.skip("boot tests build images, which needs root")
    shared = golden.shared_dir(tmp_path_factory) / "boot"
    with golden.locked(shared):
        if not shared.exists():
            free = shutil.disk_usage(shared.parent).free
            if free < FREE_NEEDED:
                pytest.fail(f"the boot tests need about {FREE_NEEDED >> 30} GiB free for their images in "
                            f"{shared.parent}, which has {free / 2**30:.1f} GiB: free space there (old pytest-of-* "
                            "directories, images), or point --basetemp at a bigger file system")
            shared.mkdir()
    return shared


@pytest.fixture(scope="session")
def update_key(boot_dir: Path) -> tuple[Path, Path]:
    return signing_key(boot_dir)


def signing_key(boot_dir: Path) -> tuple[Path, Path]:
    """An OpenPGP signing key for update bundles: (secret key file, public key file)."""
    secret, public = boot_dir / "update-key.sec", boot_dir / "update-key.pub"
    with golden.locked(secret):
        if not secret.exists():
            make_signing_key(boot_dir / "update-gnupg", secret, public)
    return secret, public


def make_signing_key(home: Path, secret: Path, public: Path, uid: str = "liveng test updates") -> None:
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", uid, "ed25519", "sign", "never"], check=True)
    secret.write_bytes(subprocess.run([*gpg, "--export-secret-keys", uid], check=True, capture_output=True).stdout)
    public.write_bytes(subprocess.run([*gpg, "--export", uid], check=True, capture_output=True).stdout)
    subprocess.run(["rm", "-rf", str(home)], check=True)


def update_recipe(public_key: Path, version: str) -> str:
    """The recipe keys that make an image take update bundles signed with ``public_key``."""
    return f'version = "{version}"\n[update]\nkeyring = "{public_key}"\n'


# Wi-Fi support in the PC test image (Raspberry Pi images always have it): the settings tests check the
# Wi-Fi configuration that Raspberry Pi Imager's files and the settings file write (tests/boot/test_seeds.py).
TRIXIE_PACKAGES = 'packages = ["wpasupplicant"]\n'


@pytest.fixture(scope="session")
def trixie_image(boot_dir: Path, update_key: tuple[Path, Path]) -> Path:
    # Version 1 of a system that takes updates (tests/boot/test_update.py); the other tests do not mind.
    return build_image(boot_dir, "trixie", "trixie", extra=TRIXIE_PACKAGES + update_recipe(update_key[1], "1"))


@pytest.fixture()
def fresh_copy(trixie_image: Path, tmp_path: Path) -> Path:
    """A writable copy of the trixie image for one test (sparse, so cheap)."""
    copy = tmp_path / "disk.img"
    subprocess.run(["cp", "--sparse=always", trixie_image, copy], check=True)
    return copy


# The RAM-mode image: boots in ram mode by default; /srv/keep stays on the card in ram-paths mode;
# a small RAM-delta cap so that filling it is quick. A zstd squashfs, as real images have: toram
# copies less than the uncompressed one of the other test images.
RAM_RECIPE = """
[ram]
mode = "ram"
persistent_paths = ["/srv/keep"]
zram_percent = 50
delta_cap = "384m"
"""


@pytest.fixture(scope="session")
def ram_image(boot_dir: Path, update_key: tuple[Path, Path]) -> Path:
    # Version 1, taking updates: test_ram_modes ends running version 2 from RAM.
    return build_image(boot_dir, "trixie", "trixie-ram", compression="zstd",
                       extra=update_recipe(update_key[1], "1") + RAM_RECIPE)


@pytest.fixture()
def ram_copy(ram_image: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ram-disk.img"
    subprocess.run(["cp", "--sparse=always", ram_image, copy], check=True)
    return copy


# Goldens (tests/boot/golden.py): the trixie image booted once under UEFI with a blank 4 GiB second
# disk (for liveng install), once under BIOS, and the RAM-mode image once in ram mode with 2 GiB.
INSTALL_TARGET_SIZE = 4 * 1024 * layout.MiB
RAM_MEMORY = 2048  # MiB: the squashfs is copied into RAM


@pytest.fixture(scope="session")
def pc_golden(trixie_image: Path, boot_dir: Path) -> golden.Golden:
    return golden.make(trixie_image, boot_dir, "golden-uefi", blank_disks=(INSTALL_TARGET_SIZE,))


@pytest.fixture(scope="session")
def bios_golden(trixie_image: Path, boot_dir: Path) -> golden.Golden:
    return golden.make(trixie_image, boot_dir, "golden-bios", bios=True)


@pytest.fixture(scope="session")
def ram_golden(ram_image: Path, boot_dir: Path) -> golden.Golden:
    return golden.make(ram_image, boot_dir, "golden-ram", memory=RAM_MEMORY)


# Version 2 of the trixie test image, for the system update tests (tests/boot/test_update*.py).
PACKAGE = "hello"  # what v2 adds
RELEASE_FILE = "/etc/liveng-test-release"
# v2's own health check: it fails while /srv/fail-health exists. /srv is kept by an update, so v1
# can make a v2 that never comes up good, which a real broken release would be.
HEALTH = "#!/bin/sh\n! test -e /srv/fail-health\n"


def build_channel(boot_dir: Path, key: tuple[Path, Path], name: str, target: str = "pc",
                  packages: tuple[str, ...] = (), extra: str = "", workdir: Path | None = None) -> Path:
    """A channel directory holding version 2 of a test image (zstd, as shipped systems are) and its
    signed index: the image's recipe (``extra``, built in ``workdir``) plus ``packages``,
    RELEASE_FILE and the health check below."""
    channel = boot_dir / f"{name}-channel"
    with golden.locked(channel):
        if not (channel / bundle.INDEX_NAME).exists():
            files = boot_dir / f"{name}-files"
            files.mkdir(exist_ok=True)
            (files / "release").write_text("v2\n")
            (files / "health").write_text(HEALTH)
            text = (f"packages = {list(packages)!r}\n".replace("'", '"') + update_recipe(key[1], "2")
                    + f'[[files]]\nsource = "{files / "release"}"\ndestination = "{RELEASE_FILE}"\n'
                    + f'[[files]]\nsource = "{files / "health"}"\ndestination = "/etc/liveng/health.d/test"\n'
                    + 'mode = "0755"\n' + extra)
            image = build_image(workdir or boot_dir, "trixie", name, compression="zstd", target=target, extra=text)
            channel.mkdir(exist_ok=True)
            assert main(["bundle", str(image), "-o", str(channel / "v2.bundle"), "--sign-key", str(key[0]),
                         "--channel"]) == 0
            image.unlink()  # the bundle is what the tests use
    return channel


@pytest.fixture(scope="session")
def v2_channel(boot_dir: Path, update_key: tuple[Path, Path]) -> Path:
    return make_v2_channel(boot_dir, update_key)


def make_v2_channel(boot_dir: Path, update_key: tuple[Path, Path]) -> Path:
    """Version 2 of the trixie PC test image: one package more (PACKAGE)."""
    return build_channel(boot_dir, update_key, "update-v2", packages=(PACKAGE,))


@pytest.fixture(scope="session")
def rpi_v2_channel(boot_dir: Path, update_key: tuple[Path, Path]) -> Path:
    """Version 2 of the rpi test image: only its files differ, so that its rootfs is the cached one
    (an arm64 rootfs with one package more costs ~6 min more through qemu-user)."""
    return build_channel(boot_dir, update_key, "rpi-v2", target="rpi")
