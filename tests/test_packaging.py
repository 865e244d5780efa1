"""The GPU image's install path: a wheel built from exactly the files the Dockerfile copies, installed (not editable)
into a clean virtual environment, runs `cc-train` with every shipped config, condition, question set and data file
found inside the installed package."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig

import pytest
from conftest import LIMIT_S, REPO

pytestmark = pytest.mark.slow


def dockerfile_sources() -> list[str]:
    """The repository paths the Dockerfile's COPY lines take into the build context's /opt/cc-train."""
    sources = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words and words[0] == "COPY":
            sources += [word for word in words[1:-1] if not word.startswith("--")]
    return sources


def test_the_dockerfile_files_build_a_wheel_that_works_installed(tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    for source in dockerfile_sources():
        path = REPO / source
        if path.is_dir():
            shutil.copytree(path, context / source, symlinks=True)
        else:
            (context / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, context / source)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(context)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("cc_train-*.whl"))

    venv = tmp_path / "clean"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # the dependencies come from the test environment (appended after the clean venv's own packages); its editable
    # cc-train is not activated there (a path added by .pth does not run that folder's .pth files)
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*args], capture_output=True, text=True, cwd=tmp_path, timeout=LIMIT_S)

    where = run(
        str(venv / "bin/python"),
        "-c",
        "import cc_train, cc_train.resources as r, cc_train.inputs.conditions as c; print(cc_train.__file__); "
        "print(r.conf_dir(), r.evals_dir(), r.conditions_dir(), r.paper_results_file()); "
        "print(sorted(c.available([])))",
    )
    assert where.returncode == 0, where.stderr[-3000:]
    assert str(site) in where.stdout and str(REPO) not in where.stdout  # the installed copy, not the checkout
    assert "'conscious'" in where.stdout and "'toaster'" in where.stdout
    package = site / "cc_train"
    for shipped in (
        "conf/recipe/paper/qwen3_30b_a3b.yaml",
        "evals/preferences.yaml",
        "evals/multiturn/autonomy.yaml",
        "evals/judge_check/labelled.yaml",
        "evals/paper_results/single_turn.yaml",
        "condition_files/human.yaml",
        "condition_files/templates/identity.yaml",
    ):
        assert (package / shipped).is_file(), shipped

    cli = str(venv / "bin/cc-train")
    assert run(cli, "--help").returncode == 0
    plan = run(cli, "plan", "recipe=paper/qwen3_30b_a3b")
    assert plan.returncode == 0 and "H200" in plan.stdout, plan.stderr[-3000:]
    job = run(cli, "train", "--cfg", "job", "recipe=paper/deepseek_v3_1", "condition=human")
    assert job.returncode == 0 and "experiment: paper_deepseek_v3_1" in job.stdout, job.stderr[-3000:]
