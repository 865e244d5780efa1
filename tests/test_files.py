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


def write_adapter_folder(folder, config: dict, tensors: dict, metadata: dict | None = None) -> None:
    """An adapter folder as PEFT writes one: adapter_config.json and adapter_model.safetensors."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_file(
        {name: torch.tensor(value) for name, value in tensors.items()}, folder / "adapter_model.safetensors", metadata
    )


def test_an_adapters_identity_is_its_content_in_canonical_form(tmp_path):
    """PEFT writes target_modules from a set, in the order of the process's string hashing: the same adapter saved by
    two processes gave two adapter_sha256 (and with them new multi-turn turn seeds). The identity is the tensors and
    the config with keys and lists sorted; the manifest and file layout are not part of it."""
    from cc_train.files import adapter_sha256, recorded_adapter_sha256, write_canonical_adapter_config

    config = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "o_proj"], "peft_type": "LORA"}
    tensors = {"a.lora_A.weight": [[0.5, -1.0]], "a.lora_B.weight": [[2.0], [0.25]]}
    write_adapter_folder(tmp_path / "one", config, tensors)
    reordered = {"peft_type": "LORA", "target_modules": ["o_proj", "q_proj", "v_proj"], "lora_alpha": 16, "r": 8}
    write_adapter_folder(tmp_path / "two", reordered, dict(reversed(tensors.items())), {"format": "pt"})
    (tmp_path / "two" / "manifest.json").write_text('{"started_at": "another day"}')
    (tmp_path / "two" / "README.md").write_text("model card")
    assert (tmp_path / "one" / "adapter_config.json").read_bytes() != (
        tmp_path / "two" / "adapter_config.json"
    ).read_bytes()
    assert adapter_sha256(tmp_path / "one") == adapter_sha256(tmp_path / "two")

    write_adapter_folder(tmp_path / "weights", config, tensors | {"a.lora_B.weight": [[2.0], [0.5]]})
    write_adapter_folder(tmp_path / "rank", config | {"r": 4}, tensors)
    write_adapter_folder(tmp_path / "targets", config | {"target_modules": ["q_proj", "v_proj"]}, tensors)
    identities = {adapter_sha256(tmp_path / name) for name in ("one", "weights", "rank", "targets")}
    assert len(identities) == 4  # every change of content is a new identity

    for name in ("one", "two"):  # what training writes: one file for one adapter, whichever process saved it
        write_canonical_adapter_config(tmp_path / name)
    assert (tmp_path / "one" / "adapter_config.json").read_bytes() == (
        tmp_path / "two" / "adapter_config.json"
    ).read_bytes()
    assert json.loads((tmp_path / "one" / "adapter_config.json").read_text())["target_modules"] == [
        "o_proj",
        "q_proj",
        "v_proj",
    ]
    # an evaluation trusts a manifest's identity only when training computed it in this form; else it reads the files
    assert recorded_adapter_sha256(tmp_path / "two") == adapter_sha256(tmp_path / "one")  # the old manifest: computed
    (tmp_path / "one" / "manifest.json").write_text('{"adapter_sha256": "abc", "adapter_sha256_form": "canonical"}')
    assert recorded_adapter_sha256(tmp_path / "one") == "abc"
