"""The recipe's [[scripts]]: executables run at build time inside the image tree, in order.

Each runs as root in a chroot of the tree with /proc, /sys and the host's /dev mounted, and a fresh
tmpfs on /run (empty in the image anyway) holding the scripts, a resolv.conf (the image's points
into /run), and the recipe's directory, read-only. Services are not started (policy-rc.d), so a
script may apt-get install. Environment:

    LIVENG_TARGET      pc or rpi
    LIVENG_ARCH        amd64 or arm64
    LIVENG_SUITE       the Debian suite
    LIVENG_RECIPE_DIR  the recipe's directory (read-only), for files a script needs
    DEBIAN_FRONTEND    noninteractive

A script that fails stops the build with its name, exit status and the last lines of its output;
no image is written. The mounts are undone whatever happens.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from liveng.host.errors import BuildError, CommandError
from liveng.host.recipe import Recipe
from liveng.host.runner import run

log = logging.getLogger("liveng.scripts")

RUN_DIR = "run/liveng"
RECIPE_MOUNT = f"{RUN_DIR}/recipe"
POLICY_RC = "usr/sbin/policy-rc.d"
TAIL_LINES = 25


@contextlib.contextmanager
def _mounted(tree: Path, recipe_dir: Path | None) -> Iterator[None]:
    done: list[Path] = []

    def mount(argv: list[str], where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        run(["mount", *argv, str(where)])
        done.append(where)

    try:
        mount(["-t", "proc", "proc"], tree / "proc")
        mount(["-t", "sysfs", "sysfs"], tree / "sys")
        mount(["--bind", "/dev"], tree / "dev")
        mount(["-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "liveng-build"], tree / "run")
        resolve = tree / "run/systemd/resolve"
        resolve.mkdir(parents=True)
        for name in ("stub-resolv.conf", "resolv.conf"):
            shutil.copyfile("/etc/resolv.conf", resolve / name)
        if recipe_dir is not None:
            mount(["--bind", str(recipe_dir)], tree / RECIPE_MOUNT)
            run(["mount", "-o", "remount,bind,ro", str(tree / RECIPE_MOUNT)])
        yield
    finally:
        for where in reversed(done):
            try:
                run(["umount", str(where)])
            except CommandError:
                log.warning("%s is busy (a script left a process running?): detached lazily", where)
                run(["umount", "--lazy", str(where)], check=False)


def run_scripts(tree: Path, recipe: Recipe) -> None:
    if not recipe.scripts:
        return
    recipe_dir = None if recipe.path.startswith("<") else Path(recipe.path).resolve().parent
    env = {"LIVENG_TARGET": recipe.target, "LIVENG_ARCH": recipe.arch, "LIVENG_SUITE": recipe.suite,
           "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
    if recipe_dir is not None:
        env["LIVENG_RECIPE_DIR"] = f"/{RECIPE_MOUNT}"
    policy = tree / POLICY_RC
    ours = not policy.exists() and not policy.is_symlink()
    if ours:
        policy.write_text("#!/bin/sh\n# liveng build: no service starts while recipe scripts run\nexit 101\n")
        policy.chmod(0o755)
    try:
        with _mounted(tree, recipe_dir):
            scripts = tree / RUN_DIR / "scripts"
            scripts.mkdir(parents=True)
            for i, script in enumerate(recipe.scripts):
                inside = f"/{RUN_DIR}/scripts/{i:02d}-{script.name}"
                shutil.copyfile(script.path, tree / inside.lstrip("/"))
                (tree / inside.lstrip("/")).chmod(0o755)
                log.info("recipe script %s", script.path)
                # One stream, stdout and stderr in order, for the tail of a failure.
                proc = run(["chroot", str(tree), "/bin/sh", "-c", '"$0" 2>&1', inside], env=env, capture=True,
                           check=False)
                output = proc.stdout.decode(errors="replace")
                for line in output.splitlines():
                    log.debug("%s: %s", script.name, line)
                if proc.returncode != 0:
                    tail = "\n".join(output.rstrip().splitlines()[-TAIL_LINES:]) or "(no output)"
                    raise BuildError(f"recipe script {script.path} failed with exit status {proc.returncode}; "
                                     f"its last lines:\n{tail}")
    finally:
        if ours:
            policy.unlink(missing_ok=True)
