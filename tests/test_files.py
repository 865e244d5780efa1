"""The append-only log: a torn last line is dropped, a bad line in the middle stops with file:line and changes
nothing, and the scores read only the rows asked for."""

import json

import pytest

from cc_train.files import AppendLog, LogCorruptError


def rows(*keys):
    return "".join(json.dumps({"key": key, "value": index}) + "\n" for index, key in enumerate(keys))


def test_a_torn_last_line_is_cut_and_the_rest_kept(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text(rows("a", "b") + '{"key": "c", "val')
    log = AppendLog(path)
    assert set(log.rows) == {"a", "b"} and path.read_text() == rows("a", "b")
    log.append([{"key": "c", "value": 2}, {"key": "a", "value": 9}])
    assert path.read_text() == rows("a", "b", "c"), "a present key is never written twice"
    assert [r["key"] for r in log.selected({"a", "c", "zzz"})] == ["a", "c"]


@pytest.mark.parametrize("bad", ['{"key": "b", "val\n', "not json\n", '["a list"]\n', '{"no_key": 1}\n', "\xff\xfe\n"])
def test_a_bad_line_in_the_middle_is_an_error_and_nothing_is_truncated(tmp_path, bad):
    path = tmp_path / "log.jsonl"
    content = rows("a").encode() + bad.encode("latin-1") + rows("c").encode()
    path.write_bytes(content)
    with pytest.raises(LogCorruptError, match=rf"{path}:2: not a log row .* 1 row\(s\) after it"):
        AppendLog(path)
    assert path.read_bytes() == content
