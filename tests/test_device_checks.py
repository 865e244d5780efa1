"""The device checks' wheelhouse (bench/device_wheelhouse.py): binary wheels only, for the lent machine's Python, small
enough to carry, installed offline into a clean venv (no index, no source archive: antlr4's source-only release was
what broke the last attempt), and complete: every requirement of every carried package is carried or on the image."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser

import pytest
from conftest import LIMIT_S, REPO
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

pytestmark = pytest.mark.slow
sys.path.insert(0, str(REPO / "bench"))
import device_wheelhouse  # noqa: E402

CARRY_LIMIT = 64 * 2**20  # the device tool carries at most this much, the repository included


def image_packages(folder):
    """A folder of links to this environment's copies of the image's packages (bench/device_packages.txt)."""
    import importlib.metadata as metadata

    folder.mkdir()
    image = device_wheelhouse.device_packages()
    for module, distributions in metadata.packages_distributions().items():
        found = next((d for d in distributions if canonicalize_name(d) in image), None)
        if found is None:
            continue
        for path in metadata.distribution(found).locate_file("").glob(f"{module}*"):
            if path.name in (module, f"{module}.py") or path.name.startswith(f"{module}.cpython"):
                (folder / path.name).symlink_to(path)
    return folder


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    dest = tmp_path_factory.mktemp("wheels")
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "device_wheelhouse.py"), "--dest", str(dest)],
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
    )
    if result.returncode != 0 and ("NewConnectionError" in result.stderr or "Name or service" in result.stderr):
        pytest.skip(f"PyPI is unreachable from here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return dest


def test_the_wheelhouse_holds_binary_wheels_for_the_devices_python_only(wheelhouse):
    files = sorted(wheelhouse.iterdir())
    assert files and all(f.suffix == ".whl" for f in files), [f.name for f in files]
    names = {canonicalize_name(parse_wheel_filename(f.name)[0]) for f in files}
    assert {"trl", "datasets", "hydra-core", "omegaconf", "antlr4-python3-runtime"} <= names
    for wheel in files:
        tags = parse_wheel_filename(wheel.name)[3]
        assert any(t.interpreter in ("py3", "cp312", "py312") for t in tags), wheel.name
        assert all(t.platform in ("any",) or "x86_64" in t.platform for t in tags), wheel.name
    assert sum(f.stat().st_size for f in files) < CARRY_LIMIT / 4


def test_every_requirement_of_a_carried_package_is_carried_or_on_the_image(wheelhouse):
    carried = {canonicalize_name(parse_wheel_filename(f.name)[0]) for f in wheelhouse.glob("*.whl")}
    image = device_wheelhouse.device_packages()
    environment = {**default_environment(), **device_wheelhouse.DEVICE_PYTHON, "extra": ""}
    unmet = []
    for wheel in wheelhouse.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            fields = Parser().parsestr(archive.read(name).decode())
        for text in fields.get_all("Requires-Dist") or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate(environment):
                continue
            if canonicalize_name(requirement.name) not in carried | image:
                unmet.append(f"{wheel.name}: {requirement}")
    assert unmet == []


def test_the_wheels_install_offline_into_a_clean_venv(wheelhouse, tmp_path):
    venv = tmp_path / "clean"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    environment = {"PATH": "/usr/bin:/bin", "PIP_CONFIG_FILE": "/dev/null", "HOME": str(tmp_path)}  # no index at all
    install = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--only-binary=:all:"]
    installed = subprocess.run(
        [*install, *map(str, sorted(wheelhouse.glob("*.whl")))], capture_output=True, text=True, env=environment
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    # the image's packages (PyYAML, cloudpickle, ...) from this environment, after the carried ones, as on the machine
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "image.pth").write_text(str(image_packages(tmp_path / "image")) + "\n")
    # the pure-Python part imports without a GPU: Hydra with its config parser (antlr4's built wheel), the launcher
    check = "import antlr4, omegaconf, hydra, submitit, dill; from hydra import compose, initialize_config_dir"
    imported = subprocess.run([python, "-c", check], capture_output=True, text=True, env=environment)
    assert imported.returncode == 0, imported.stderr[-3000:]
