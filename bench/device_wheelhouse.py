"""The wheels a bare lent GPU machine needs to run cc-train's training path, for its Python, downloaded here.

    python bench/device_wheelhouse.py [--dest .device_wheels]      # then carry .device_wheels (device tool)

The machine (bench/device_packages.txt: its image's packages) has torch, transformers, accelerate, pyarrow, ... but no
trl, datasets, hydra, omegaconf, nor network. What it lacks is the closure of ROOTS' requirements (as installed in this
environment, the versions cc-train is tested with) less what the image has, plus CARRIED (packages the image has at
other versions than cc-train needs). Each is a binary wheel for CPython 3.12 on manylinux x86-64
(`pip download --only-binary=:all:`); a package published only as a source archive (antlr4-python3-runtime, which
omegaconf needs) is pure Python and is built into a wheel here (`pip wheel`), never shipped as a source archive.
On the machine: python3 -m pip install --no-index --no-deps --target /tmp/site .device_wheels/*.whl
(tests/test_device_checks.py installs them offline into a clean venv the same way.)
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
ROOTS = ("trl", "datasets", "peft", "hydra-core", "hydra-submitit-launcher")  # imported by `cc-train data/train`
CARRIED = ("peft", "fsspec")  # on the image, but cc-train is tested with its own versions of these
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
DEVICE_PYTHON = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux"}


def device_packages() -> set[str]:
    lines = (HERE / "device_packages.txt").read_text().splitlines()
    return {canonicalize_name(line) for line in lines if line.strip() and not line.startswith("#")}


def missing() -> dict[str, str]:
    """{package: version} to carry: ROOTS and their requirements, less the image's packages, plus CARRIED."""
    has = device_packages() - {canonicalize_name(name) for name in CARRIED}
    environment = {**default_environment(), **DEVICE_PYTHON, "extra": ""}
    found: dict[str, str] = {}
    todo = list(ROOTS)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found or name in has:
            continue
        found[name] = metadata.version(name)
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(requirement.name)
    return dict(sorted(found.items()))


def download(packages: dict[str, str], dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    for name, version in packages.items():
        binary = [*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
        binary += ["--implementation", "cp", *(f"--platform={p}" for p in PLATFORMS), "-d", str(dest)]
        if subprocess.run([*binary, f"{name}=={version}"], capture_output=True).returncode != 0:
            # published as a source archive only: build the (pure Python) wheel here
            built = [*pip, "wheel", "--quiet", "--no-deps", "-w", str(dest), f"{name}=={version}"]
            subprocess.run(built, check=True)
    wheels = sorted(dest.glob("*.whl"))
    others = sorted(set(dest.iterdir()) - set(wheels))
    if others:
        raise SystemExit(f"not wheels, the machine could not install them offline: {others}")
    return wheels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(".device_wheels"))
    args = parser.parse_args()
    packages = missing()
    wheels = download(packages, args.dest)
    size = sum(w.stat().st_size for w in wheels)
    listed = ", ".join(f"{name}=={version}" for name, version in packages.items())
    print(f"{len(wheels)} wheels, {size / 2**20:.1f} MiB in {args.dest}: {listed}")


if __name__ == "__main__":
    main()
