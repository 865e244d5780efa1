"""What a study feeds cc-train, loaded and validated before anything runs: fine-tuning conditions
(conditions.py), single-turn question sets (questions.py), multi-turn scenario sets (scenarios.py) and Petri's
seeds and judge dimensions (petri_sets.py). Every loader reports each problem at once, naming file and field.
Stages import these; these import no stage."""
