"""Where the shipped configs and question sets are: the source checkout, or the installed package."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parents[1]


def _find(name: str, installed_as: str | None = None) -> Path:
    for candidate in (_PACKAGE / (installed_as or name), _CHECKOUT / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cc-train's {name}/ folder is missing from {_PACKAGE} and {_CHECKOUT}")


def conf_dir() -> Path:
    return _find("conf")


def evals_dir() -> Path:
    return _find("evals")


def conditions_dir() -> Path:
    return _find("conditions", installed_as="condition_files")  # its installed name (setuptools package-dir)


def multiturn_dir() -> Path:
    return evals_dir() / "multiturn"


def petri_dir() -> Path:
    return evals_dir() / "petri"


def paper_results_file() -> Path:
    return evals_dir() / "paper_results" / "single_turn.yaml"
