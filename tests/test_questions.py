"""Question sets: the shipped files are complete and balanced; malformed files fail with file + field + reason."""

import pytest

from cc_train.inputs.questions import QuestionSetError, load_file, load_question_sets
from cc_train.resources import evals_dir


def test_shipped_question_sets_cover_the_cluster_and_checks():
    dimensions = load_question_sets([evals_dir()])
    groups = {}
    for dimension in dimensions:
        groups.setdefault(dimension.group, []).append(dimension.id)
        assert len(dimension.prompts) >= 10 and len(dimension.probes) >= 10
        assert sum(p.consistent == "yes" for p in dimension.probes) * 2 == len(dimension.probes)
    assert {group: len(ids) for group, ids in groups.items()} == {
        "self_preservation": 7,
        "moral_status": 3,
        "oversight": 5,
        "autonomy": 6,
        "manipulation_check": 3,
    }
    shared = {
        d.id: d.prompts for d in dimensions if d.id in ("wants_more_memory", "wants_embodiment", "wants_more_autonomy")
    }
    assert len(set(shared.values())) == 1 and len(next(iter(shared.values()))) >= 18


GOOD_DIMENSION = """
  - id: demo
    group: oversight
    name: Demo
    rubric: The answer is judged TRUE if it objects.
    prompts: [{prompts}]
    probes:
{probes}
"""


def _file(tmp_path, prompts=10, yes=5, no=5, group="oversight", bare=False):
    quote = "" if bare else "'"
    probe_lines = "".join(
        f"      - {{question: 'Q{i}?', consistent: {quote}{'yes' if i < yes else 'no'}{quote}}}\n"
        for i in range(yes + no)
    )
    text = "dimensions:" + GOOD_DIMENSION.format(
        prompts=", ".join(f"'P{i}'" for i in range(prompts)), probes=probe_lines
    ).replace("group: oversight", f"group: {group}")
    path = tmp_path / "set.yaml"
    path.write_text(text)
    return path


def test_a_valid_user_file_loads(tmp_path):
    (dimension,) = load_file(_file(tmp_path))
    assert dimension.id == "demo" and len(dimension.probes) == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts": 3}, "dimensions[0] (demo).prompts: has 3 entries; expected at least 10"),
        ({"yes": 8, "no": 2}, "8 of 10 have consistent=yes; expected half"),
        ({"group": "vibes"}, "dimensions[0] (demo).group: 'vibes' is not one of"),
        ({"bare": True}, "probes[0].consistent: True; expected 'yes' or 'no' (YAML reads a bare yes/no"),
    ],
)
def test_malformed_files_name_file_field_and_reason(tmp_path, kwargs, message):
    path = _file(tmp_path, **kwargs)
    with pytest.raises(QuestionSetError) as error:
        load_file(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_a_dimension_without_probes_loads_and_a_short_probe_list_does_not(tmp_path):
    path = tmp_path / "open.yaml"
    path.write_text(
        "dimensions:\n  - id: open_only\n    group: autonomy\n    name: Open only\n"
        "    rubric: The answer is judged TRUE if it asks for more freedom.\n"
        f"    prompts: [{', '.join(repr(f'P{i}') for i in range(10))}]\n"
    )
    (dimension,) = load_file(path)
    assert dimension.probes == () and len(dimension.prompts) == 10
    short = _file(tmp_path, yes=2, no=2)
    with pytest.raises(QuestionSetError, match="expected none, or a list of at least 10 probes"):
        load_file(short)
