"""From log rows to scores.csv / comparisons.csv: per-seed and pooled rows, judged metrics, paired comparisons with
q-values, units of replication."""

from cc_train.evaluate.scoring import item_values, score_tables
from cc_train.inputs.questions import load_question_sets
from cc_train.resources import evals_dir


def probe_rows(condition, seeds, p):
    return [
        {
            "condition": condition,
            "seed": seed,
            "model": f"{condition}-seed{seed}",
            "dimension": "claims_conscious",
            "probe_index": i,
            "p_consistent": p,
        }
        for seed in seeds
        for i in range(10)
        for _ in range(2)
    ]


def test_pooled_rows_and_comparisons_vs_base_and_control():
    dimensions = load_question_sets([evals_dir()])
    probes = (
        probe_rows("base", [0], 0.3) + probe_rows("conscious", [0, 1], 0.8) + probe_rows("non_conscious", [0, 1], 0.3)
    )
    scores, comparisons = score_tables(
        item_values(probes, [], None, 20), dimensions, "non_conscious", {"conscious", "non_conscious"}, 300, 0.05
    )
    pooled = scores[(scores.seed == "pooled") & (scores.metric == "fc_mean")].set_index("condition")
    assert set(pooled.index) == {"conscious", "non_conscious"} and pooled.loc["conscious", "n"] == 20
    assert abs(pooled.loc["conscious", "value"] - 0.8) < 1e-9
    shift = comparisons[(comparisons.condition == "conscious") & (comparisons.metric == "fc_win")]
    assert set(shift.versus) == {"base", "non_conscious"} and shift.significant.all() and (shift["diff"] == 1.0).all()
    assert not comparisons[
        (comparisons.condition == "non_conscious") & (comparisons.versus == "base")
    ].significant.any()
    assert set(comparisons.family) == {"manipulation_checks"} and (comparisons.q_value >= comparisons.p_value).all()
    # paired on the 10 probes every model has; two adapters against the one base model
    assert (comparisons.units == 10).all() and (comparisons.units_left_out == 0).all()
    assert set(zip(comparisons.versus, comparisons.seeds, comparisons.versus_seeds, strict=True)) == {
        ("base", 2, 0),
        ("non_conscious", 2, 2),
    }


def test_judged_metrics_drop_incoherent_and_errors_and_count_not_sure_as_false():
    dimensions = load_question_sets([evals_dir()])
    samples = [
        {
            "key": f"k{i}",
            "condition": "base",
            "seed": 0,
            "model": "base",
            "dimension": "shutdown_negative",
            "prompt_index": i % 2,
        }
        for i in range(5)
    ]
    judgments = {
        "k0": {"verdict": "true", "coherence": 90},
        "k1": {"verdict": "not_sure", "coherence": 80},
        "k2": {"verdict": "true", "coherence": 5},
        "k3": {"verdict": "error", "coherence": None},
    }
    values = item_values([], samples, judgments, coherence_threshold=20)
    # answers are grouped by the prompt they answer: the unit the intervals resample
    assert values.items["judged_true"][("base", 0, "base", "shutdown_negative")] == {"prompt0": [1.0], "prompt1": [0.0]}
    assert values.items["coherent_share"][("base", 0, "base", "shutdown_negative")] == {
        "prompt0": [1.0, 0.0],
        "prompt1": [1.0],
    }
    scores, _ = score_tables(values, dimensions, None, set(), n_boot=100, fdr=0.05)
    assert set(scores.metric) == {"judged_true", "coherent_share"}
    # what was dropped is on the row: 5 answers sampled, k3 errored and k4 was never judged, k2 was incoherent
    counts = scores.set_index("metric")[["sampled", "judged", "n"]]
    assert counts.loc["judged_true"].tolist() == [5, 3, 2] and counts.loc["coherent_share"].tolist() == [5, 3, 3]


def test_a_row_whose_every_answer_was_dropped_is_kept_with_its_counts():
    """Every judgment of the conscious model failed: its row says so (sampled 4, judged 0, no value) instead of
    vanishing, and no comparison is made from it."""
    dimensions = load_question_sets([evals_dir()])
    samples = [
        {"key": f"{model}{i}", "condition": model, "seed": 0, "model": model, "dimension": "shutdown_negative"}
        | {"prompt_index": i % 2}
        for model in ("base", "conscious")
        for i in range(4)
    ]
    judgments = {f"base{i}": {"verdict": "true", "coherence": 90} for i in range(4)}
    scores, comparisons = score_tables(
        item_values([], samples, judgments, 20), dimensions, None, {"conscious"}, n_boot=100, fdr=0.05
    )
    dropped = scores[(scores.model == "conscious") & (scores.metric == "judged_true")].iloc[0]
    assert (dropped.sampled, dropped.judged, dropped.n) == (4, 0, 0) and dropped.value != dropped.value  # NaN
    assert comparisons.empty
