"""One evaluation split over several processes: data-parallel engines on a node (`eval.engines`), jobs on many nodes
(`eval.shard=I/N`), merged by the rows' content keys (`eval.shard=merge`, or the whole evaluation's own last step).

The split. Every target (base, prompted condition, adapter, checkpoint, merged adapter, remote endpoint) is a unit of
work weighed by the tokens its items generate at most (evaluate/workload.py). The units, in serving order, are cut
into N contiguous groups of about equal weight. Whole targets first: a shard then serves few adapters, as LoRA in
few chunks of its slots. Where whole targets cannot balance the shards (fewer targets than shards, or one heavy
target among few), every splittable target is cut into p parts, the smallest p for which the busiest shard holds at
most BALANCE_TOLERANCE more than an even share: an item belongs to part `hash(key) mod p`, a stable hash of the
item's key (probes and open prompts by their log keys, conversations by scenario, audits by Petri seed). A target
that needs an engine of its own (an adapter served merged, a remote endpoint) is never cut. A job's share is cut
again, the same way, among its data-parallel engines, so what a job does never depends on how many engines it had.

The split depends only on the configuration and the inputs (never on the hardware), so every shard computes the same
one. Each process appends its rows to its own logs under `<eval.dir>/shards/<I>-of-<N>[/engine-<k>-of-<K>]/`, never
to another's, and reads every other log of the evaluation folder (read only) so that nothing done anywhere is done
twice. The final step copies the rows it scores from the shards' logs into the evaluation folder's own, in key
order; scores are computed from rows sorted by key, so they are the same whichever process wrote a row.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from cc_train.files import AppendLog, read_log

SHARDS_DIR = "shards"
MERGE = "merge"
BALANCE_TOLERANCE = 0.10  # the busiest shard may hold this much more than an even share before targets are cut
JOB_FOLDER = re.compile(r"(\d+)-of-(\d+)")


@dataclass(frozen=True)
class ShardSpec:
    """Which part of the evaluation this process does: `job` = (I, N) of eval.shard, `engine` = (k, K) of this job's
    data-parallel engines; None where the level is whole."""

    job: tuple[int, int] | None = None
    engine: tuple[int, int] | None = None

    @property
    def whole(self) -> bool:
        return self.job is None and self.engine is None

    def levels(self) -> list[tuple[int, int]]:
        return [level for level in (self.job, self.engine) if level is not None]

    def folder(self, eval_dir: Path) -> Path:
        parts = ([f"{self.job[0]}-of-{self.job[1]}"] if self.job else []) + (
            [f"engine-{self.engine[0]}-of-{self.engine[1]}"] if self.engine else []
        )
        return Path(eval_dir).joinpath(SHARDS_DIR, *parts) if parts else Path(eval_dir)

    def label(self) -> str:
        parts = ([f"shard {self.job[0]}/{self.job[1]}"] if self.job else []) + (
            [f"engine {self.engine[0]}/{self.engine[1]}"] if self.engine else []
        )
        return ", ".join(parts) or "the whole evaluation"


def part_of(key: str, salt: int, parts: int) -> int:
    """The part (of `parts`) an item belongs to at cut number `salt`: a stable hash of its key."""
    return int(hashlib.sha256(f"{salt}|{key}".encode()).hexdigest()[:12], 16) % parts


@dataclass(frozen=True)
class Unit:
    """A target's items, or those whose key falls in `part` of `parts` at every cut made so far."""

    target: str
    weight: float
    splittable: bool = True
    cuts: tuple[tuple[int, int], ...] = ()

    def owns(self, key: str) -> bool:
        return all(part_of(key, salt, parts) == part for salt, (parts, part) in enumerate(self.cuts))

    def pieces(self, parts: int) -> list[Unit]:
        if parts == 1 or not self.splittable:
            return [self]
        return [replace(self, weight=self.weight / parts, cuts=(*self.cuts, (parts, part))) for part in range(parts)]


def contiguous(units: list[Unit], count: int) -> list[list[Unit]]:
    """`units` in order into `count` groups of about equal weight: each unit goes to the group its weight's midpoint
    falls in."""
    total = sum(unit.weight for unit in units)
    groups: list[list[Unit]] = [[] for _ in range(count)]
    done = 0.0
    for unit in units:
        index = min(count - 1, int(count * (done + unit.weight / 2) / total)) if total else 0
        groups[index].append(unit)
        done += unit.weight
    return groups


def split(units: list[Unit], count: int) -> list[list[Unit]]:
    """`units` into `count` shares: whole targets where they balance, else each splittable target cut into the fewest
    parts that do (see the module's docstring)."""
    total = sum(unit.weight for unit in units)
    for parts in range(1, count + 1):
        groups = contiguous([piece for unit in units for piece in unit.pieces(parts)], count)
        busiest = max(sum(unit.weight for unit in group) for group in groups)
        if busiest <= (1 + BALANCE_TOLERANCE) * total / count:
            break
    return groups


class Share:
    """The units one process evaluates: which targets, and which of their items."""

    def __init__(self, units: list[Unit]) -> None:
        self.units = units
        self.by_target: dict[str, list[Unit]] = defaultdict(list)
        for unit in units:
            self.by_target[unit.target].append(unit)

    @property
    def targets(self) -> list[str]:
        return list(self.by_target)

    def owns(self, target: str, key: str) -> bool:
        return any(unit.owns(key) for unit in self.by_target.get(target, ()))

    def describe(self) -> list[dict]:
        return [{"target": u.target, "weight": u.weight, "cuts": [list(cut) for cut in u.cuts]} for u in self.units]


class ItemsByTarget:
    """What a multi-turn kind of work (conversations by scenario, Petri audits by seed) asks of every target, and
    which of it a share still has to run. Subclasses fill `by_item` (target -> item id -> result keys), `results`
    (their log) and `enabled`."""

    enabled: bool
    by_item: dict[str, dict[str, set[str]]]
    results: KeyedLogs

    @property
    def keys(self) -> dict[str, set[str]]:
        """Target -> every result key of its items."""
        return {name: set().union(*items.values()) for name, items in self.by_item.items()}

    def owned(self, name: str, share: Share) -> dict[str, set[str]]:
        """Item id -> result keys of `name`'s items in `share`."""
        return {item: keys for item, keys in self.by_item.get(name, {}).items() if share.owns(name, item)}

    def todo(self, engine_models: list[str], share: Share) -> list[str]:
        """The engine's targets with items of the share still to run."""
        if not self.enabled:
            return []
        return [
            name
            for name in engine_models
            if not set().union(*self.owned(name, share).values()) <= self.results.rows.keys()
        ]

    def expected(self, share: Share) -> set[str]:
        """Every result key the share owes."""
        return {key for name in self.by_item for keys in self.owned(name, share).values() for key in keys}

    def selected(self) -> list[dict]:
        """The logged rows of every target's items, as the tables read them."""
        every = {key for per in self.by_item.values() for keys in per.values() for key in keys}
        return self.results.selected(every) if self.enabled else []

    def groups(self, names: list[str], share: Share) -> dict[tuple[str, ...], list[str]]:
        """`names` grouped by the item ids of the share they own: one Inspect evaluation per group."""
        groups: dict[tuple[str, ...], list[str]] = {}
        for name in names:
            groups.setdefault(tuple(self.owned(name, share)), []).append(name)
        return groups


def share_of(units: list[Unit], spec: ShardSpec) -> Share:
    """This process's share: the job's part of all units, then the engine's part of the job's."""
    for index, count in spec.levels():
        units = split(units, count)[index - 1]
    return Share(units)


def owner(units: list[Unit], count: int, target: str, key: str) -> int:
    """Which of `count` job shards (1-based) evaluates `target`'s item `key`."""
    return next(index for index, group in enumerate(split(units, count), start=1) if Share(group).owns(target, key))


def job_shard_counts(eval_dir: Path) -> set[int]:
    """The shard counts N of the `I-of-N` folders that jobs have written under the evaluation folder."""
    root = Path(eval_dir) / SHARDS_DIR
    found = (JOB_FOLDER.fullmatch(folder.name) for folder in root.iterdir()) if root.is_dir() else ()
    return {int(match.group(2)) for match in found if match}


class KeyedLogs:
    """One keyed log of the evaluation as this process sees it: its own append-only file, which only it writes, and
    the same log of the evaluation folder and of every other shard, read once at the start (another process may be
    appending to them: an unfinished last line is left out)."""

    def __init__(self, own: Path, others: list[Path]) -> None:
        self.own = AppendLog(own)
        self.rows: dict[str, dict] = {}
        for path in others:
            self.rows.update(read_log(path)[0])
        self.rows.update(self.own.rows)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def append(self, rows) -> None:
        new = [row for row in rows if row["key"] not in self.rows]
        self.own.append(new)
        self.rows.update((row["key"], row) for row in new)

    def selected(self, keys: set[str]) -> list[dict]:
        """The rows of `keys` found in any of the logs, sorted by key."""
        return [self.rows[key] for key in sorted(keys & self.rows.keys())]

    def adopt(self, keys: set[str]) -> int:
        """Copy into the own log, in key order, the rows of `keys` that only other logs hold; how many."""
        missing = [self.rows[key] for key in sorted(keys & self.rows.keys()) if key not in self.own]
        self.own.append(missing)
        return len(missing)


@dataclass(frozen=True)
class Place:
    """Where one process of the evaluation writes (`folder`: the evaluation folder, or its shard's folder below it),
    and what it reads besides."""

    eval_dir: Path
    folder: Path

    def log(self, name: str) -> KeyedLogs:
        own = self.folder / name
        copies = [self.eval_dir / name, *sorted((self.eval_dir / SHARDS_DIR).glob(f"**/{name}"))]
        return KeyedLogs(own, [path for path in copies if path != own])

    def shard_folders(self) -> list[Path]:
        """Every shard folder that has written a log, for the manifest."""
        root = self.eval_dir / SHARDS_DIR
        return sorted({path.parent for path in root.glob("**/*.jsonl")}) if root.is_dir() else []
