"""Toolchain images: a domain's packages on the base image, tagged by recipe, with a manifest
of the exact versions; built from the registries this machine reaches (Debian and PyPI)."""

from __future__ import annotations

import json
import subprocess

import pytest
from omegaconf import OmegaConf

from litecoder.sandboxes.toolchain import dockerfile, failed_package, image_name, manifest_path, packages

TINY = ["domain=version_control", "domain.toolchain.debian=[jq]", "domain.toolchain.python=[six]"]


def toolchain(**lists):
    return OmegaConf.create({"debian": [], "python": [], "npm": [], **lists})


def test_the_recipe_names_the_image_and_changes_with_it():
    base = "sha256:" + "0" * 64
    same = image_name("build_tools", base, toolchain(debian=["make", "cmake"]))
    assert same == image_name("build_tools", base, toolchain(debian=["cmake", "make"]))
    assert same.startswith("litecoder-toolchain:build_tools-")
    assert same != image_name("build_tools", base, toolchain(debian=["make", "cmake=3.25.1-1"]))
    assert same != image_name("build_tools", "sha256:" + "1" * 64, toolchain(debian=["make", "cmake"]))


def test_python_and_npm_packages_bring_their_installers_and_pins_stay_as_written():
    lists = packages(toolchain(python=["numpy==2.1.0"], npm=["left-pad@1.3.0"]))
    assert {"python3-pip", "python3-venv", "npm"} <= set(lists["debian"])
    text = dockerfile("litecoder-base:bookworm", toolchain(debian=["jq=1.6-2.1"], python=["numpy==2.1.0"]))
    assert "apt-get install -y --no-install-recommends jq=1.6-2.1 python3-pip python3-venv" in text
    assert "pip install --break-system-packages 'numpy==2.1.0'" in text
    assert "COPY ca-certificates.crt" in text and "rm -rf /var/lib/apt/lists" in text


@pytest.mark.parametrize("output, package", [
    ("E: Unable to locate package jqq", "jqq"),
    ("E: Version '9.9' for 'jq' was not found", "jq=9.9"),
    ("ERROR: No matching distribution found for six==0.0.0", "six==0.0.0"),
    ("npm ERR! 404 Not Found - GET https://registry.npmjs.org/no-such-pkg\n", "no-such-pkg"),
    ("something else broke", None),
])
def test_a_failed_build_names_its_package(output, package):
    assert failed_package(output) == package


@pytest.mark.docker
def test_stage_image_builds_once_then_reuses_and_records_versions(cli):
    result = cli("stage=image", "run.name=img", *TINY, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    image = result.stdout.strip().splitlines()[-1]
    assert image.startswith("litecoder-toolchain:version_control-")
    try:
        # offline, the tools are there
        run = subprocess.run(["docker", "run", "--rm", "--network", "none", image, "bash", "-c",
                              "jq --version && python3 -c 'import six; print(six.__version__)'"],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        manifest = json.loads(manifest_path(image).read_text())
        assert manifest["installed"]["debian"]["jq"].startswith("1.")
        assert manifest["installed"]["python"]["six"] == run.stdout.split()[-1]
        assert manifest["recipe"]["python"] == ["six"] and manifest["domain"] == "version_control"
        again = cli("stage=image", "run.name=img", *TINY)
        assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == image
        assert "reused=True" in again.stderr
    finally:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
        manifest_path(image).unlink(missing_ok=True)


@pytest.mark.docker
def test_a_package_that_does_not_exist_fails_with_one_line_naming_it(cli):
    result = cli("stage=image", "domain=version_control", "domain.toolchain.debian=[litecoder-no-such-package]")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("litecoder: error: toolchain image ")
    assert "package litecoder-no-such-package could not be installed" in result.stderr
