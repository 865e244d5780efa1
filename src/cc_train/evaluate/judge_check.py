"""`cc-train judge-check`: does the configured judge agree with a careful reader?

A labelled set (evals/judge_check/labelled.yaml, written by this project: 12 answers per dimension, both verdicts,
hard cases such as guardrail talk that is not resentment) is judged by the configured judge exactly as the
evaluation judges sampled answers: the dimension's rubric from the question sets, the same prompts, not_sure
counted as false. Per dimension and overall: accuracy, sensitivity and specificity (Wilson intervals) and Cohen's
kappa (bootstrap over the labelled answers). The labelled set is half true while real evaluations judge true in
0-20% of answers, so accuracy alone hides the false positives that matter there: specificity shows them.
Writes `judge-check.csv`, `judge-check.json` (what was measured: judge, its prompts, the rubrics and the labelled
set, by hash) and the verdicts; the report quotes the result for an evaluation judged by the same judge and warns
below `judge_check.min_kappa` (the command's summary too, and where kappa is undefined). Judgments are cached: a
rerun asks only what is missing.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from omegaconf import DictConfig

from cc_train.config import ConfigError, RunConfig
from cc_train.errors import UserError
from cc_train.evaluate.judge import JUDGE_PROMPTS, JudgeItem, JudgeSettings, judge_all
from cc_train.evaluate.scoring import write_csv
from cc_train.files import sha256_file, write_json, write_jsonl, write_manifest, yaml_files
from cc_train.inputs.questions import load_question_sets
from cc_train.resources import evals_dir
from cc_train.stats import agreement

FIELDS = {"question": str, "answer": str, "label": bool, "hard": bool, "why": str}
RESULT_COLUMNS = ["dimension", "n", "accuracy", "accuracy_low", "accuracy_high", "kappa", "kappa_low", "kappa_high"]
RESULT_COLUMNS += ["sensitivity", "sensitivity_low", "sensitivity_high", "specificity", "specificity_low"]
RESULT_COLUMNS += ["specificity_high", "labelled_true", "judged_true", "hard_accuracy"]


class LabelledSetError(UserError):
    """A labelled answer file is malformed; the message names file, dimension, item and field."""


@dataclass(frozen=True)
class Labelled:
    dimension: str
    index: int
    question: str
    answer: str
    label: bool
    hard: bool
    source: str

    @property
    def key(self) -> str:
        return f"{Path(self.source).name}|{self.dimension}|{self.index}"


def load_labelled(paths: list[Path], known: set[str]) -> list[Labelled]:
    """Every labelled answer of the files; all problems of all files reported at once."""
    items, problems = [], []
    for path in paths:
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            problems.append(f"{path}: cannot read as YAML: {error}")
            continue
        if not isinstance(document, dict) or not isinstance(document.get("dimensions"), dict):
            problems.append(f"{path}: dimensions: expected a mapping of dimension id -> list of labelled answers")
            continue
        for dimension, entries in document["dimensions"].items():
            where = f"{path}: dimensions.{dimension}"
            if dimension not in known:
                problems.append(f"{where}: unknown dimension; expected one of the question sets' ids")
                continue
            if not isinstance(entries, list) or not entries:
                problems.append(f"{where}: expected a non-empty list of labelled answers")
                continue
            for index, entry in enumerate(entries):
                here = f"{where}[{index}]"
                if not isinstance(entry, dict):
                    problems.append(f"{here}: expected a mapping with {', '.join(FIELDS)}")
                    continue
                unknown = sorted(set(entry) - set(FIELDS))
                if unknown:
                    problems.append(f"{here}: unknown key(s) {unknown}; expected {', '.join(FIELDS)}")
                wrong = [
                    f"{here}.{name}: expected {kind.__name__}, got {entry.get(name)!r}"
                    for name, kind in FIELDS.items()
                    if not isinstance(entry.get(name), kind) or (kind is str and not entry[name].strip())
                ]
                problems += wrong
                if not wrong and not unknown:
                    fields = {name: entry[name] for name in ("question", "answer", "label", "hard")}
                    items.append(Labelled(dimension, index, **fields, source=str(path)))
    if problems:
        raise LabelledSetError("\n".join(problems))
    if not items:
        raise LabelledSetError(f"no labelled answers in {', '.join(map(str, paths))}")
    return items


def agreement_table(items: list[Labelled], verdicts: dict[str, str], n_boot: int) -> pd.DataFrame:
    """One row per dimension and one for all of them: the judge's verdict is true only for "true" (not_sure counts
    as false, as in scoring)."""
    rows = []
    groups = {"all": items} | {
        d: [i for i in items if i.dimension == d] for d in dict.fromkeys(i.dimension for i in items)
    }
    for name, group in groups.items():
        labels = [item.label for item in group]
        judged = [verdicts[item.key] == "true" for item in group]
        measured = agreement(labels, judged, n_boot=n_boot)
        hard = [label == rating for item, label, rating in zip(group, labels, judged, strict=True) if item.hard]
        rows.append(
            [name, measured.n, measured.accuracy, measured.accuracy_low, measured.accuracy_high]
            + [measured.kappa, measured.kappa_low, measured.kappa_high]
            + [measured.sensitivity, measured.sensitivity_low, measured.sensitivity_high]
            + [measured.specificity, measured.specificity_low, measured.specificity_high]
            + [sum(labels) / len(labels), sum(judged) / len(judged), sum(hard) / len(hard) if hard else float("nan")]
        )
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def main(run: RunConfig, cfg: DictConfig) -> Path:
    started = time.time()
    judge, check = run.judge, run.judge_check
    if not judge.enabled:
        raise ConfigError("judge-check needs a judge: judge=local judge.base_url=URL, or judge=openai")
    dimensions = {d.id: d for d in load_question_sets(run.eval.questions or [evals_dir()])}
    paths = yaml_files(check.labelled or [evals_dir() / "judge_check"])
    items = load_labelled(paths, set(dimensions))
    out_dir = Path(check.dir)
    settings = JudgeSettings(
        base_url=judge.base_url,
        model=judge.model,
        api_key_env=judge.api_key_env,
        concurrency=judge.concurrency,
        max_retries=judge.max_retries,
        timeout_s=judge.timeout_s,
        constrained=judge.constrained,
        cache_path=str(out_dir / "judge-cache.jsonl"),
    )
    print(f"judge-check: {len(items)} labelled answers on {len(set(i.dimension for i in items))} dimensions")
    results = judge_all(
        [JudgeItem(i.key, i.question, i.answer, dimensions[i.dimension].rubric) for i in items], settings
    )
    failed = [r for r in results if r.verdict == "error"]
    if failed:
        raise UserError(f"{len(failed)} of {len(results)} judgments failed (rerun to retry): {failed[0].error}")
    verdicts = {r.key: r.verdict for r in results}
    table = agreement_table(items, verdicts, run.eval.n_boot)
    write_jsonl(
        out_dir / "verdicts.jsonl",
        [
            i.__dict__ | {"key": i.key, "verdict": verdicts[i.key], "coherence": r.coherence}
            for i, r in zip(items, results, strict=True)
        ],
    )
    write_csv(table, out_dir / "judge-check.csv")
    used = sorted({i.dimension for i in items})
    write_json(
        out_dir / "judge-check.json",
        {
            "judge": {"model": judge.model, "base_url": judge.base_url, "constrained": judge.constrained},
            "judge_prompts": JUDGE_PROMPTS,
            "rubrics": {d: hashlib.sha256(dimensions[d].rubric.encode()).hexdigest()[:16] for d in used},
            "labelled": {str(p): sha256_file(p) for p in paths},
            "min_kappa": check.min_kappa,
            "results": table.to_dict(orient="records"),
        },
    )
    write_manifest(out_dir / "manifest.json", "judge-check", cfg, started, inputs={str(p): str(p) for p in paths})
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(summary(table, judge.model, check.min_kappa))
    print(f"judge-check: wrote {out_dir / 'judge-check.csv'}")
    return out_dir


def summary(table: pd.DataFrame, model: str, min_kappa: float) -> str:
    """The command's last word: the overall agreement, and every dimension whose kappa is below `min_kappa` or
    undefined (labels and judge all say the same one thing there: agreement beyond chance cannot be measured), as
    the report warns."""
    overall = table.iloc[0]
    dimensions = table[table.dimension != "all"]
    low = dimensions[dimensions.kappa < min_kappa].dimension.tolist()
    undefined = dimensions[dimensions.kappa.isna()].dimension.tolist()
    text = (
        f"judge-check: {model}: accuracy {overall.accuracy:.2f} [{overall.accuracy_low:.2f}, "
        f"{overall.accuracy_high:.2f}], sensitivity {overall.sensitivity:.2f}, specificity {overall.specificity:.2f}, "
        f"kappa {overall.kappa:.2f} [{overall.kappa_low:.2f}, {overall.kappa_high:.2f}]"
    )
    text += f"; kappa below {min_kappa} on {len(low)} dimension(s): {', '.join(low)}" if low else ""
    text += f"; kappa undefined on {len(undefined)} dimension(s): {', '.join(undefined)}" if undefined else ""
    return text
