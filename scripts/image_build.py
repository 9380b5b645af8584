"""`make image`: build the pod image from images/finetune/Dockerfile, tagged as the DAG pins it.

The tag is ``FINETUNE_IMAGE`` (default ``ghcr.io/finetune-sweep/finetune:0.1.0``, the Airflow
side's settings): the image the DAG's pods run, so that ``imagePullPolicy: IfNotPresent`` finds it
in the engine's store. The base (the Dockerfile's ``BASE_IMAGE`` build argument) comes from
``FINETUNE_BASE_IMAGE``:

``auto`` (default)  the registry's base (the Dockerfile's default) when it is in the store or can
                    be pulled, else ``local`` (said on the terminal: CI here reaches no registry)
``local``           Debian bookworm minbase + python3.11 made with debootstrap and imported into
                    the engine; its rootfs tarball is cached under ``.image/`` (``make clean``)
``registry``        the Dockerfile's default base, pulled (fails without a registry)
anything else       that image reference (e.g. a mirror of python:3.11-slim-bookworm)

pip inside the build trusts this machine's CA bundle (``PIP_CERT``, else the system bundle) when
it has one: it is passed as a build secret, never stored in a layer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "plugins")]

from container_engine import (  # noqa: E402
    CACHE_DIR,
    REPO_ROOT,
    Engine,
    EngineError,
    EngineUnavailable,
    Steps,
    fail,
    find_engine,
)
from finetune_sweep.settings import SettingsError, get_settings  # noqa: E402

DOCKERFILE = REPO_ROOT / "images" / "finetune" / "Dockerfile"
BASE_CHOICES = ("auto", "local", "registry")
# The local base: what the Dockerfile needs of a Python base (python3.11 with venv; groupadd and
# useradd come with minbase), and the CA certificates python:slim has too.
SUITE = "bookworm"
PACKAGES = ("python3.11", "python3.11-venv", "python3-distutils", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# dpkg inside debootstrap: no fsync per file (a throw-away rootfs), no docs, man pages or locales.
DPKG_CONFIG = (
    "force-unsafe-io\n"
    "path-exclude=/usr/share/doc/*\n"
    "path-exclude=/usr/share/man/*\n"
    "path-exclude=/usr/share/locale/*\n"
    "path-exclude=/usr/share/info/*\n"
)
# What an image never needs of the rootfs: the downloaded .debs, apt's package lists (an image
# that installs packages runs apt-get update first, as on any Debian image), logs.
TRIMMED = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "var/log",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
    "usr/share/info",
    "debootstrap",
)
PULL_TIMEOUT_SECONDS = 120


def registry_base(dockerfile: Path = DOCKERFILE) -> str:
    """The Dockerfile's default ``BASE_IMAGE`` (its one spelling).

    :param dockerfile: the Dockerfile.
    """
    match = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile.read_text(), re.MULTILINE)
    if match is None:
        raise ValueError(f"{dockerfile} has no `ARG BASE_IMAGE=<default>` line")
    return match.group(1)


def local_base_key(mirror: str) -> str:
    """A short hash of what makes the local base: a change of packages or trimming makes a new one.

    :param mirror: the Debian mirror.
    """
    recipe = json.dumps([SUITE, PACKAGES, mirror, DPKG_CONFIG, TRIMMED])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def local_base_tag(key: str) -> str:
    """The engine's tag of the local base."""
    return f"localhost/finetune-base:{SUITE}-python3.11-{key}"


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below ``path`` (debootstrap mounts /proc and /sys in its target)."""
    root = str(path.resolve())
    points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    return [point for point in points if point == root or point.startswith(root + "/")]


def remove_rootfs(path: Path) -> None:
    """Unmount what debootstrap left mounted in ``path``, then delete it; never delete through a mount."""
    for point in sorted(mounts_below(path), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)
    if mounts_below(path):
        raise RuntimeError(f"{path} still has mounts ({', '.join(mounts_below(path))}): not deleting it")
    shutil.rmtree(path, ignore_errors=True)


def build_rootfs_tarball(tarball: Path, *, mirror: str) -> None:
    """debootstrap a minbase bookworm with python3.11 and pack it as ``tarball``.

    :param tarball: where the rootfs tarball goes (written whole, then renamed).
    :param mirror: the Debian mirror.
    """
    if os.geteuid() != 0:
        raise EngineUnavailable("the local base needs root (debootstrap)")
    if shutil.which("debootstrap") is None:
        raise EngineUnavailable("the local base needs debootstrap (apt-get install debootstrap)")
    rootfs = tarball.with_suffix(".rootfs")
    remove_rootfs(rootfs)
    (rootfs / "etc/dpkg/dpkg.cfg.d").mkdir(parents=True)
    (rootfs / "etc/dpkg/dpkg.cfg.d/01-image").write_text(DPKG_CONFIG)
    log = tarball.with_suffix(".log")
    try:
        with log.open("w") as out:
            done = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), mirror],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
                timeout=900,
            )
        if done.returncode != 0:
            last = log.read_text().strip().splitlines()[-1:] or ["no output"]
            raise EngineError(f"debootstrap failed (exit {done.returncode}; {log}): {last[0]}")
        for relative in TRIMMED:
            target = rootfs / relative
            shutil.rmtree(target, ignore_errors=True)
        (rootfs / "var/log").mkdir(exist_ok=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".tar.partial")
        # numeric owners: the rootfs's own uids, not this machine's names for them
        subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.replace(tarball)
    finally:
        remove_rootfs(rootfs)


def local_base(engine: Engine, steps: Steps, *, mirror: str = DEFAULT_MIRROR) -> str:
    """The local base in the engine's store: imported from the cached tarball, built when missing.

    :param engine: the engine.
    :param steps: where the steps' times are printed.
    :param mirror: the Debian mirror.
    :returns: its tag.
    """
    key = local_base_key(mirror)
    tag = local_base_tag(key)
    if engine.run(["image", "inspect", tag], check=False).returncode == 0:
        print(f"image: local base {tag} is in the store (cached)")
        return tag
    tarball = CACHE_DIR / f"base-{SUITE}-python3.11-{key}.tar"
    if not tarball.exists():
        with steps.step(f"debootstrap {SUITE} minbase + python3.11 -> {tarball.relative_to(REPO_ROOT)}"):
            CACHE_DIR.mkdir(parents=True, exist_ok=True)
            build_rootfs_tarball(tarball, mirror=mirror)
    with steps.step(f"import the local base as {tag}"):
        engine.run(["import", "--change", 'CMD ["python3.11"]', str(tarball), tag])
    return tag


def choose_base(engine: Engine, choice: str, steps: Steps) -> str:
    """The ``BASE_IMAGE`` of the build for ``FINETUNE_BASE_IMAGE=choice`` (see the module docstring).

    :param engine: the engine.
    :param choice: ``auto``, ``local``, ``registry`` or an image reference.
    :param steps: where the steps' times are printed.
    """
    if choice == "local":
        return local_base(engine, steps)
    if choice not in BASE_CHOICES:
        return choice
    reference = registry_base()
    if engine.run(["image", "inspect", reference], check=False).returncode == 0:
        return reference
    with steps.step(f"try to pull {reference}"):
        pulled = engine.run(["pull", "--quiet", reference], check=False, timeout=PULL_TIMEOUT_SECONDS)
    if pulled.returncode == 0:
        return reference
    said = (pulled.stderr.strip() or "no output").splitlines()[-1]
    if choice == "registry":
        raise EngineError(f"cannot pull the base {reference}: {said}")
    print(f"image: the registry is unreachable ({said[:200]}); building the local base instead")
    return local_base(engine, steps)


def ca_bundle() -> Path | None:
    """The CA bundle pip trusts on this machine (``PIP_CERT``, else the system's), if any."""
    for candidate in (os.environ.get("PIP_CERT"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build_image(engine: Engine, steps: Steps, *, choice: str, tag: str) -> str:
    """Build the pod image; returns its tag.

    :param engine: the engine.
    :param steps: where the steps' times are printed.
    :param choice: the base (``FINETUNE_BASE_IMAGE``).
    :param tag: the image reference to tag it with.
    """
    base = choose_base(engine, choice, steps)
    args = ["build", "--file", str(DOCKERFILE), "--build-arg", f"BASE_IMAGE={base}", "--tag", tag]
    # the host's network: a loopback proxy or resolver of the machine is reachable from RUN steps
    args += ["--network", "host"]
    bundle = ca_bundle()
    if bundle is not None:
        args += ["--secret", f"id=pip-ca,src={bundle}"]
    with steps.step(f"build {tag} on {base}"):
        engine.run([*args, str(REPO_ROOT)], timeout=1800)
    return tag


def image_size(engine: Engine, tag: str) -> int:
    """The image's size in bytes as the engine reports it."""
    return int(engine.run(["image", "inspect", "--format", "{{.Size}}", tag]).stdout.strip())


def main(argv: list[str] | None = None) -> int:
    """Build the image; prints each step's time, the tag and the size."""
    parser = argparse.ArgumentParser(prog="scripts/image_build.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base",
        default=os.environ.get("FINETUNE_BASE_IMAGE", "").strip() or "auto",
        help="auto | local | registry | an image reference (default: FINETUNE_BASE_IMAGE, else auto)",
    )
    args = parser.parse_args(argv)
    try:
        tag = get_settings().image
        engine = find_engine()
        steps = Steps("image")
        build_image(engine, steps, choice=args.base, tag=tag)
        size = image_size(engine, tag)
    except (EngineUnavailable, EngineError, SettingsError, subprocess.TimeoutExpired) as err:
        return fail(str(err))
    print(f"image: {tag} built with {engine.name} in {steps.total():.1f} s, {size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
