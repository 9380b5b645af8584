"""image_build: the base chosen, the local base's recipe and cache key, the rootfs removed safely."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import image_build
from container_engine import Engine, Steps


def test_the_registry_base_is_the_dockerfiles_default() -> None:
    text = image_build.DOCKERFILE.read_text()

    assert f"ARG BASE_IMAGE={image_build.registry_base()}\n" in text


def test_a_dockerfile_without_the_arg_is_refused(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM debian:bookworm\n")

    with pytest.raises(ValueError, match="no `ARG BASE_IMAGE=<default>` line"):
        image_build.registry_base(dockerfile)


def test_the_local_base_key_follows_its_recipe() -> None:
    key = image_build.local_base_key(image_build.DEFAULT_MIRROR)

    assert re.fullmatch(r"[0-9a-f]{12}", key)
    assert key == image_build.local_base_key(image_build.DEFAULT_MIRROR)
    assert key != image_build.local_base_key("http://mirror.example/debian")
    assert image_build.local_base_tag(key) == f"localhost/finetune-base:bookworm-python3.11-{key}"


def test_the_local_base_has_what_the_dockerfile_runs() -> None:
    # python3.11 -m venv needs python3.11-venv (whose python3.11-distutils only python3-distutils provides)
    assert {"python3.11", "python3.11-venv", "python3-distutils"} <= set(image_build.PACKAGES)
    assert "force-unsafe-io" in image_build.DPKG_CONFIG


def test_an_explicit_base_reference_is_used_as_given(capsys: pytest.CaptureFixture[str]) -> None:
    # no engine call is made for it: a missing engine binary would fail if one were
    engine = Engine("/nonexistent/podman")

    assert image_build.choose_base(engine, "mirror.local/python:3.11-slim-bookworm", Steps("t")) == (
        "mirror.local/python:3.11-slim-bookworm"
    )


def test_remove_rootfs_deletes_an_unmounted_tree(tmp_path: Path) -> None:
    rootfs = tmp_path / "base.rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "os-release").write_text("bookworm")

    assert image_build.mounts_below(rootfs) == []
    image_build.remove_rootfs(rootfs)
    assert not rootfs.exists()


def test_remove_rootfs_never_deletes_through_a_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rootfs = tmp_path / "base.rootfs"
    (rootfs / "proc").mkdir(parents=True)
    # a mount that umount cannot remove (here: umount is not called on a real mount at all)
    monkeypatch.setattr(image_build, "mounts_below", lambda path: [str(rootfs / "proc")])
    monkeypatch.setattr(image_build.subprocess, "run", lambda *args, **kwargs: None)

    with pytest.raises(RuntimeError, match="still has mounts"):
        image_build.remove_rootfs(rootfs)
    assert (rootfs / "proc").is_dir()


def test_pip_trusts_pip_cert_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("PIP_CERT", str(bundle))

    assert image_build.ca_bundle() == bundle
