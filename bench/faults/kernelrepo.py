"""A newer build of the image's own kernel package, for an apt kernel upgrade: the installed
linux-image-VERSION and the packages that depend on exactly that build (the linux-image-ARCH
metapackage), each rebuilt with the same files and Version plus KERNEL_SUFFIX, in a flat
repository WORKDIR/repo/kernel-ARCH. Made once per arch: what is installed is asked of the golden;
the .debs are fetched from the Debian mirror the host's apt uses and checked against what dpkg
recorded in the image."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from liveng.host.mirrors import resolve_mirrors
from tests.boot import golden

KERNEL_SUFFIX = "+faults1"
_FIELDS = "${Package}\\t${Version}\\t${source:Package}\\t${Architecture}\\t${Depends}\\n"


@dataclass(frozen=True)
class KernelPackage:
    package: str  # linux-image-$(uname -r)
    installed: str  # its version in the image
    upgrade: str  # its version in the repository
    repo: str  # the repository's directory under the served root
    also: tuple[str, ...] = ()  # upgraded with it (they depend on exactly its version)


@dataclass(frozen=True)
class _Installed:
    package: str
    version: str
    source: str
    arch: str
    md5sums: str  # MD5 of its md5sums control file ("" when it has none: a metapackage)


def index_repo(directory: Path) -> None:
    """A flat repository's Packages and Release for the .debs in ``directory``."""
    packages = subprocess.run(["dpkg-scanpackages", "-m", "."], cwd=directory, check=True,
                              capture_output=True, text=True).stdout
    (directory / "Packages").write_text(packages)
    release = subprocess.run(["apt-ftparchive", "release", "."], cwd=directory, check=True,
                             capture_output=True, text=True).stdout
    (directory / "Release").write_text(release)


def kernel_repo(g: golden.Golden, arch: str, workdir: Path) -> KernelPackage:
    repo = workdir / "repo" / f"kernel-{arch}"
    facts = repo / "kernel.json"
    if facts.exists():
        known = json.loads(facts.read_text())
        return KernelPackage(**{**known, "also": tuple(known["also"])})
    repo.mkdir(parents=True, exist_ok=True)
    kernel, others = _installed(g, workdir)
    for pkg in (kernel, *others):
        rebuild(_fetch(pkg, repo / f"{pkg.package}.orig.deb"), repo, kernel.package, kernel.version)
    index_repo(repo)
    result = KernelPackage(kernel.package, kernel.version, kernel.version + KERNEL_SUFFIX, repo.name,
                           tuple(p.package for p in others))
    tmp = facts.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(result)))
    tmp.replace(facts)
    return result


def _installed(g: golden.Golden, workdir: Path) -> tuple[_Installed, list[_Installed]]:
    """The running kernel's package, and the installed packages that depend on exactly its version."""
    disk = workdir / "kernel-query.img"
    vm = golden.resume(g, disk, workdir / "kernel-query.log")
    try:
        table = vm.sh(f"dpkg-query -W -f '{_FIELDS}'")
        name = vm.sh("echo linux-image-$(uname -r)")
        md5 = vm.sh(f"md5sum < $(dpkg-query --control-path {name} md5sums)").split()[0]
    finally:
        vm.close()
        disk.unlink(missing_ok=True)
    rows = [line.split("\t") for line in table.splitlines() if line.count("\t") == 4]
    by_name = {r[0]: r for r in rows}
    if name not in by_name:
        raise RuntimeError(f"the image has no package {name} (the running kernel's)")
    package, version, source, deb_arch, _ = by_name[name]
    kernel = _Installed(package, version, source, deb_arch, md5)
    return kernel, [_Installed(r[0], r[1], r[2], r[3], "") for r in dependents(rows, package, version)]


def dependents(rows: list[list[str]], package: str, version: str) -> list[list[str]]:
    """The rows (Package, Version, Source, Architecture, Depends) that depend on exactly ``version``
    of ``package``: apt would have to remove them to upgrade it alone."""
    exact = re.compile(rf"(^|[,|]\s*){re.escape(package)} \(= {re.escape(version)}\)")
    return [r for r in rows if exact.search(r[4])]


def _fetch(pkg: _Installed, dest: Path) -> Path:
    """The .deb of exactly the installed build: from the archive's pool, or (a security update)
    the security archive's, where apt itself would find it. One put at ``dest`` by hand is used."""

    def same_build(deb: Path) -> bool:
        fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"], check=True,
                                capture_output=True, text=True).stdout
        if fields.split() != ["Package:", pkg.package, "Version:", pkg.version]:
            return False
        if not pkg.md5sums:
            return True
        md5sums = subprocess.run(["dpkg-deb", "-I", str(deb), "md5sums"], check=True, capture_output=True).stdout
        return hashlib.md5(md5sums).hexdigest() == pkg.md5sums

    if dest.exists():
        if not same_build(dest):
            raise RuntimeError(f"{dest}: not the build of {pkg.package} {pkg.version} installed in the image")
        return dest
    mirrors = resolve_mirrors("", "")
    name = f"{pkg.package}_{pkg.version.split(':')[-1]}_{pkg.arch}.deb"
    prefix = pkg.source[:4] if pkg.source.startswith("lib") else pkg.source[0]
    urls = [f"{mirrors.archive}/pool/main/{prefix}/{pkg.source}/{name}"]
    if mirrors.security:
        urls.append(f"{mirrors.security}/pool/updates/main/{prefix}/{pkg.source}/{name}")
    part = dest.with_suffix(".part")
    for url in urls:
        try:
            urllib.request.urlretrieve(url, part)
        except urllib.error.HTTPError:
            continue
        if not same_build(part):
            raise RuntimeError(f"{url}: not the build of {pkg.package} installed in the image")
        part.replace(dest)
        return dest
    raise RuntimeError(f"{pkg.package} {pkg.version} is in none of {', '.join(urls)}: put its .deb at {dest} "
                       "by hand (apt-get download in the image) and run again")


def rebuild(deb: Path, repo: Path, kernel: str, version: str) -> Path:
    """``deb`` again (into ``repo``; ``deb`` deleted) with Version plus KERNEL_SUFFIX and, where it
    depends on exactly ``version`` of the package ``kernel``, on the new build."""
    tree = repo / "tree"
    subprocess.run(["rm", "-rf", str(tree)], check=True)
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN/control"
    text = control.read_text()
    new = re.sub(r"^Version: (.*)$", rf"Version: \1{KERNEL_SUFFIX}", text, count=1, flags=re.M)
    new = new.replace(f"{kernel} (= {version})", f"{kernel} (= {version}{KERNEL_SUFFIX})")
    if new == text:
        raise RuntimeError(f"{deb}: no Version field in its control file")
    control.write_text(new)
    fields = dict(line.split(": ", 1) for line in new.splitlines() if ": " in line and not line[0].isspace())
    out = repo / f"{fields['Package']}_{fields['Version']}_{fields['Architecture']}.deb"
    # Uncompressed: the modules are compressed already, and the emulated guest need not unpack it.
    subprocess.run(["dpkg-deb", "-Znone", "-b", str(tree), str(out)], check=True, capture_output=True)
    subprocess.run(["rm", "-rf", str(tree), str(deb)], check=True)
    return out
