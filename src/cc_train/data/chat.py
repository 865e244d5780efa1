"""Load and validate chat datasets in OpenAI chat JSONL (`{"messages": [{"role", "content"}, ...]}`)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from cc_train.errors import UserError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
MAX_REPORTED_ERRORS = 20


class DataError(UserError):
    """A dataset file is malformed; the message names file:line and what was expected."""


def _row_problems(row: object) -> list[str]:
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or not row["messages"]:
        return ["missing 'messages': expected a non-empty list of {role, content} objects"]
    problems = []
    previous = None
    messages = row["messages"]
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            problems.append(f"{where} is {type(message).__name__}; expected an object with role and content")
            continue
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            problems.append(f"{where}.role={role!r} is not one of {', '.join(ROLES)}")
            continue
        if not isinstance(content, str) or not content.strip():
            problems.append(f"{where}.content is empty; expected non-empty text")
        if role == "system" and index != 0:
            problems.append(f"{where} is a system message; expected it only as the first message")
        if role != "system" and previous == role:
            problems.append(
                f"{where}.role={role!r} follows another {role!r}; expected user and assistant turns to alternate"
            )
        if role == "assistant" and previous in (None, "system"):
            problems.append(f"{where} is an assistant turn before any user turn")
        previous = role
    last = messages[-1]
    if isinstance(last, dict) and last.get("role") in ROLES and last.get("role") != "assistant":
        problems.append(f"last message is from {last.get('role')!r}; expected the assistant's reply to train on")
    return problems


def jsonl_records(path: str | Path, errors: list[str]) -> list[tuple[int, object]]:
    """(line number, parsed JSON) of every non-blank line; bytes that are not UTF-8 text or not JSON are reported
    into `errors` as path:line: reason (a binary file gives errors, never a traceback)."""
    path = Path(path)
    if not path.is_file():
        errors.append(f"{path}: no such file; expected a JSONL file")
        return []
    records = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                errors.append(
                    f"{path}:{number}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1}); "
                    "expected one UTF-8 JSON object per line"
                )
                continue
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                errors.append(f"{path}:{number}: invalid JSON ({error.msg} at column {error.colno})")
    return records


def raise_collected(errors: list[str], what: str) -> None:
    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        raise DataError(f"{len(errors)} problem(s) in {what}:\n" + "\n".join(shown) + more)


def chat_rows(path: str | Path, errors: list[str]) -> list[dict]:
    """The valid chat rows of one file; every problem goes into `errors` as path:line: reason."""
    rows = []
    for number, row in jsonl_records(path, errors):
        problems = _row_problems(row)
        errors += [f"{path}:{number}: {problem}" for problem in problems]
        if not problems:
            rows.append(row)
    if not rows and not errors:
        errors.append(f"{path}: no rows; expected at least one chat")
    return rows


def load_chat_jsonl(path: str | Path) -> list[dict]:
    """Every row checked; all problems raised together as one DataError listing path:line: reason."""
    errors: list[str] = []
    rows = chat_rows(path, errors)
    raise_collected(errors, str(path))
    duplicates = count_duplicates(rows)
    if duplicates:
        log.warning("%s: %d duplicate rows (same messages)", path, duplicates)
    return rows


def count_duplicates(rows: list[dict]) -> int:
    keys = Counter(json.dumps(row["messages"], sort_keys=True) for row in rows)
    return sum(count - 1 for count in keys.values() if count > 1)


def length_report(rows: list[dict], tokenizer, max_length: int) -> dict:
    """Token lengths as the trainer will see them, and how many rows exceed max_length (and get truncated)."""
    lengths = [
        len(tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"])
        for row in rows
    ]
    truncated = sum(length > max_length for length in lengths)
    if truncated:
        log.warning(
            "%d of %d rows exceed train.max_length=%d tokens and will be truncated", truncated, len(rows), max_length
        )
    return {
        "rows": len(rows),
        "max_tokens": max(lengths),
        "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "truncated_rows": truncated,
        "max_length": max_length,
    }
