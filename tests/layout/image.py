"""The layout tests' image (built once per module by the ``built`` fixture, conftest.py) and helpers."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from liveng.host import recipe as recipes
from liveng.host.build import build
from tests.layout import fixture

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3RrZXl0ZXN0a2V5dGVzdGtleXRlc3RrZXk test@liveng"
RECIPE = f"""
target = "pc"
hostname = "layout-test"
mirror = "http://mirror.example/debian"
security_mirror = "none"
compression = "lz4"
cmdline = ["quiet"]
timezone = "Europe/Berlin"
keyboard = "de"
[wifi]
country = "DE"
ssid = "layout"
passphrase = "layout-passphrase"
[sizes]
boot = 64
slot = 32
persistence = 64
[[files]]
source = "motd"
destination = "/etc/motd"
mode = "0600"
[[files]]
source = "hello.service"
destination = "/etc/systemd/system/hello.service"
[services]
enable = ["hello.service"]
[[users]]
name = "pi"
ssh_keys = ["{SSH_KEY}"]
"""


@dataclass(frozen=True)
class Built:
    image: Path
    image_id: str
    workdir: Path


def sh(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True).stdout


def make(d: Path) -> Built:
    """The layout tests' image, built offline in ``d`` from the small rootfs fixture."""
    (d / "motd").write_text("welcome to liveng\n")
    (d / "hello.service").write_text("[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n")
    (d / "recipe.toml").write_text(RECIPE)
    tarball = fixture.make(d / "rootfs.tar")
    out = d / "out"
    out.mkdir()
    r = recipes.load(d / "recipe.toml")
    ctx = build(r, out / "test.img", cache_dir=d / "cache", rootfs_tarball=tarball)
    return Built(image=out / "test.img", image_id=ctx.image_id, workdir=d)


def partitions(image: Path) -> dict[int, dict[str, object]]:
    table = json.loads(sh("sfdisk", "-J", image))["partitiontable"]
    return {int(p["node"][len(str(image)):]): p for p in table["partitions"]}


def extract(b: Built, number: int) -> Path:
    p = partitions(b.image)[number]
    out = b.workdir / f"p{number}.bin"
    with open(b.image, "rb") as src, open(out, "wb") as dst:
        src.seek(int(str(p["start"])) * 512)
        dst.write(src.read(int(str(p["size"])) * 512))
    return out
