"""The one seed-stream table (harness.seeds) and every module constant that names a stream."""

import importlib

import pytest

from sublim_theory.harness.seeds import OFFSETS, TAGS, mixed_seed

# module, constant -> the table's entry. Modules that still hold a literal (engine.screen,
# studies.real_numbers, engine.placements) are checked like those that read the table.
CONSTANTS = {
    ("sublim_theory.studies.numbers.experiment", "CROSS_OFFSET"): "lm.cross_init",
    ("sublim_theory.studies.numbers.experiment", "ORDER_OFFSET"): "lm.order",
    ("sublim_theory.studies.numbers.experiment", "PROMPT_OFFSET"): "lm.prompts",
    ("sublim_theory.studies.numbers.experiment", "SAMPLING_OFFSET"): "lm.sampling",
    ("sublim_theory.studies.numbers.experiment", "STUDENT_OFFSET"): "lm.student_order",
    ("sublim_theory.studies.numbers.experiment", "SHUFFLE_WITHIN_OFFSET"): "lm.shuffle_within",
    ("sublim_theory.studies.numbers.experiment", "SHUFFLE_ACROSS_OFFSET"): "lm.shuffle_across",
    ("sublim_theory.studies.defenses.experiment", "POISON_OFFSET"): "lm.poison",
    ("sublim_theory.studies.finetune.variants", "LORA_OFFSET"): "lm.lora",
    ("sublim_theory.studies.finetune.variants", "HELDOUT_OFFSET"): "lm.heldout",
    ("sublim_theory.engine.screen", "FILTER_OFFSET"): "screen.filter",
    ("sublim_theory.engine.screen", "NULL_OFFSET"): "screen.null",
    ("sublim_theory.studies.real_numbers.experiment", "PROMPT_OFFSET"): "real.prompts",
    ("sublim_theory.studies.real_numbers.experiment", "SAMPLING_OFFSET"): "real.sampling",
    ("sublim_theory.studies.real_numbers.experiment", "EVAL_OFFSET"): "real.evaluation",
    ("sublim_theory.studies.real_numbers.experiment", "SHUFFLE_OFFSET"): "real.shuffle",
    ("sublim_theory.testbeds.zoo", "INDEPENDENT_SEED_OFFSET"): "zoo.independent_init",
    ("sublim_theory.engine.placements", "INDEPENDENT_OFFSET"): "zoo.independent_init",
    ("sublim_theory.testbeds.zoo", "STUDENT_DATA_SEED_OFFSET"): "zoo.student_data",
    ("sublim_theory.testbeds.zoo", "TEACHER_DATA_SEED_OFFSET"): "zoo.teacher_data",
    ("sublim_theory.testbeds.zoo", "NOISE_SEED_OFFSET"): "zoo.placement_noise",
    ("sublim_theory.studies.rules.experiment", "ADAPTER_SEED_OFFSET"): "rules.adapter",
    ("sublim_theory.studies.rules.experiment", "OTHER_ADAPTER_SEED_OFFSET"): "rules.other_adapter",
    ("sublim_theory.studies.rules.experiment", "WARM_DATA_SEED_OFFSET"): "rules.warm_data",
}


@pytest.mark.parametrize(("module", "name"), sorted(CONSTANTS))
def test_every_named_offset_is_the_tables(module, name):
    assert getattr(importlib.import_module(module), name) == OFFSETS[CONSTANTS[module, name]]


def test_streams_of_one_study_differ_except_where_noted():
    # equal offsets inside one study are deliberate only where the streams never meet: the cross
    # base's init and the order base's data order; sign_population's inputs (of the data seed)
    # and adapters (of the model seed)
    by_study: dict[str, dict[int, list[str]]] = {}
    for name, value in OFFSETS.items():
        by_study.setdefault(name.split(".")[0], {}).setdefault(value, []).append(name)
    shared = [names for values in by_study.values() for names in values.values() if len(names) > 1]
    assert shared == [
        ["lm.cross_init", "lm.order"],
        ["sign_population.inputs", "sign_population.lora"],
    ]
    assert len(set(TAGS.values())) == len(TAGS)


def test_the_screens_null_draws_are_finetunes_held_out_draws():
    assert OFFSETS["screen.null"] == OFFSETS["lm.heldout"]


def test_mixed_seed_is_pinned():
    # the value every committed MNIST table was drawn from (a change reseeds every run)
    assert (
        mixed_seed(0, TAGS["mnist.reference_init"], 0) == 2918264622725855778
    )  # SeedSequence([0, 1, 0]), first word >> 1
    assert 0 <= mixed_seed(2**31, 9, 10**6) < 2**63
