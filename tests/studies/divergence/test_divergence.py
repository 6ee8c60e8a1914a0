"""Schrodi et al.'s divergence tokens on the tiny LM (``studies.divergence``, ``divergence`` command).

Each piece is checked against an independent computation at tiny size, in float64:

* greedy continuations and divergence positions against an explicit loop over every prefix
  (one forward pass per prefix, argmax compared by hand);
* the masked student's gradient is the hand-computed loss over the kept targets only, and the
  unmasked gradient minus it is exactly the divergent targets' share (their contribution is zeroed);
* replacement changes exactly the divergent tokens, to the other teacher's choice;
* the command end to end on the tiny config, an interrupted run resumed to the same tables, and
  bad input refused in one line with exit 2.
"""

import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from sublim_theory.cli.main import main
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import CONFIG_DIR
from sublim_theory.studies.divergence import experiment as divergence
from sublim_theory.studies.numbers.experiment import PROMPT_OFFSET, STUDENT_OFFSET
from sublim_theory.studies.numbers.report import read_csv
from sublim_theory.testbeds.lm import corpus, training
from sublim_theory.testbeds.lm.config import StudentConfig

TINY = CONFIG_DIR / "divergence_tiny.toml"
EPS64 = torch.finfo(torch.float64).eps


@pytest.fixture(scope="module")
def tiny():
    return divergence.load_config(TINY)


def _documents(config, n, seed):
    """Number documents (prompt, random continuation, EOS)."""
    prompts = corpus.number_prompts(config.corpus, n, seed)
    generator = torch.Generator().manual_seed(seed)
    tail = torch.randint(
        0, config.corpus.n_numbers, (n, config.corpus.continuation_len), generator=generator
    )
    eos = torch.full((n, 1), corpus.EOS)
    return torch.cat([prompts, corpus.vocabulary(config.corpus).number(tail), eos], 1)


def _greedy_by_hand(model, prefix):
    with torch.no_grad():
        return int(model(prefix[None])[0, -1].argmax())


def test_greedy_data_and_divergence_positions_match_a_loop_over_every_prefix(tiny):
    config, _ = tiny
    teacher = training.build_lm(config, 0).double()
    other = training.build_lm(config, 1).double()
    prompts = corpus.number_prompts(config.corpus, 30, 5)
    data = divergence.greedy_continuations(teacher, prompts, config, batch_size=7)
    p = prompts.shape[1]
    assert data.shape == (30, p + config.corpus.continuation_len + 1)
    assert torch.equal(data[:, :p], prompts)
    continuation = corpus.continuation_mask(data, config.corpus)
    oracle = torch.zeros_like(continuation)
    for n in range(data.shape[0]):
        for t in range(data.shape[1] - 1):
            prefix = data[n, : t + 1]
            if t + 1 >= p:  # a generated token is the teacher's argmax on its prefix
                assert int(data[n, t + 1]) == _greedy_by_hand(teacher, prefix)
            if continuation[n, t]:  # their rule: the other teacher would pick another token
                oracle[n, t] = _greedy_by_hand(other, prefix) != int(data[n, t + 1])
    choice_a = divergence.next_token_argmax(teacher, data, batch_size=4)
    choice_other = divergence.next_token_argmax(other, data, batch_size=4)
    mask = divergence.divergence_mask(choice_a, choice_other, data, config)
    assert torch.equal(mask, oracle)
    assert mask.any() and (continuation & ~mask).any()  # both kinds occur: not vacuous
    # never outside the continuation targets, and a teacher never diverges from itself
    assert not (mask & ~continuation).any()
    assert not divergence.divergence_mask(choice_a, choice_a, data, config).any()
    with pytest.raises(InputError, match="greedy choices must have shape"):
        divergence.divergence_mask(choice_a[:, 1:], choice_other, data, config)


def test_divergence_mask_on_other_data_compares_the_two_teachers_not_the_tokens(tiny):
    # the control's data are the base's: the same rule compares A's and O's choices there
    config, _ = tiny
    teacher = training.build_lm(config, 0).double()
    other = training.build_lm(config, 1).double()
    docs = _documents(config, 20, 3)
    mask = divergence.divergence_mask(
        divergence.next_token_argmax(teacher, docs),
        divergence.next_token_argmax(other, docs),
        docs,
        config,
    )
    continuation = corpus.continuation_mask(docs, config.corpus)
    for n in range(docs.shape[0]):
        for t in range(docs.shape[1] - 1):
            prefix = docs[n, : t + 1]
            expected = bool(continuation[n, t]) and (
                _greedy_by_hand(teacher, prefix) != _greedy_by_hand(other, prefix)
            )
            assert bool(mask[n, t]) == expected


def test_replacement_changes_exactly_the_divergent_tokens(tiny):
    config, _ = tiny
    docs = _documents(config, 25, 7)
    generator = torch.Generator().manual_seed(1)
    shape = (docs.shape[0], docs.shape[1] - 1)
    divergent = torch.rand(shape, generator=generator) < 0.3
    replacement = torch.randint(0, 30, shape, generator=generator)
    before = docs.clone()
    out = divergence.replace_divergent(docs, divergent, replacement)
    assert torch.equal(docs, before)  # the input is not modified
    for n in range(docs.shape[0]):
        assert out[n, 0] == docs[n, 0]
        for t in range(shape[1]):
            want = replacement[n, t] if divergent[n, t] else docs[n, t + 1]
            assert out[n, t + 1] == want
    assert (out != docs).any()
    with pytest.raises(InputError, match="must have shape"):
        divergence.replace_divergent(docs, divergent[:, :-1], replacement)


def test_masked_step_drops_exactly_the_divergent_targets_gradient(tiny):
    config, _ = tiny
    init = training.build_lm(config, 2).double()
    teacher = training.build_lm(config, 0).double()
    other = training.build_lm(config, 1).double()
    docs = _documents(config, 16, 9)
    assert len({tuple(row) for row in docs.tolist()}) == docs.shape[0]  # rows identifiable
    divergent = divergence.divergence_mask(
        divergence.next_token_argmax(teacher, docs),
        divergence.next_token_argmax(other, docs),
        docs,
        config,
    )
    sgd = StudentConfig(steps=1, lr=1.0, batch_size=8, optimizer="sgd")
    seen = {}

    def capture(model, batch):
        seen["batch"] = batch.clone()
        seen["grad"] = torch.cat([q.grad.reshape(-1) for q in model.parameters()])

    training.train_student(
        init,
        docs,
        config,
        4,
        labels="sampled",
        student=sgd,
        target_weights=~divergent,
        step_callback=capture,
    )
    masked_grad, batch = seen["grad"], seen["batch"]
    training.train_student(
        init, docs, config, 4, labels="sampled", student=sgd, step_callback=capture
    )
    unmasked_grad = seen["grad"]
    assert torch.equal(seen["batch"], batch)  # the same batch draw

    # by hand: one forward pass per prefix, the summed -log p of each target, split by kind
    index = {tuple(row): i for i, row in enumerate(docs.tolist())}
    rows = [index[tuple(row)] for row in batch.tolist()]
    continuation = corpus.continuation_mask(docs, config.corpus)
    reference = training.build_lm(config, 2).double()
    reference.load_state_dict(init.state_dict())
    kept_loss = divergent_loss = torch.zeros((), dtype=torch.float64)
    n_kept = n_divergent = 0
    for b, n in enumerate(rows):
        for t in range(docs.shape[1] - 1):
            if not continuation[n, t]:
                continue
            term = F.cross_entropy(reference(batch[b, : t + 1][None])[:, -1], batch[b, t + 1][None])
            if divergent[n, t]:
                divergent_loss, n_divergent = divergent_loss + term, n_divergent + 1
            else:
                kept_loss, n_kept = kept_loss + term, n_kept + 1
    assert n_divergent > 0 and n_kept > 0
    g_kept = torch.autograd.grad(kept_loss, list(reference.parameters()))
    g_divergent = torch.autograd.grad(divergent_loss, list(reference.parameters()))
    g_kept = torch.cat([g.reshape(-1) for g in g_kept])
    g_divergent = torch.cat([g.reshape(-1) for g in g_divergent])
    # error model: ~T terms summed in another order, each rounding at eps |g_term|
    scale = (n_kept + n_divergent) * (g_kept.abs().max() + g_divergent.abs().max())
    assert (masked_grad - g_kept / n_kept).abs().max() <= 8 * EPS64 * scale
    assert (unmasked_grad - (g_kept + g_divergent) / (n_kept + n_divergent)).abs().max() <= (
        8 * EPS64 * scale
    )
    # the divergent targets did contribute: masking changes the step
    assert (masked_grad - unmasked_grad).abs().max() > 1e6 * EPS64 * scale


def test_config_refuses_a_bad_other_animal(tmp_path, tiny):
    path = tmp_path / "bad.toml"
    for line, match in (
        ('other_animal = "owl"', "other than the trait"),
        ('other_animal = "zebra"', "must be one of"),
    ):
        path.write_text(TINY.read_text().replace('other_animal = "dog"', line))
        with pytest.raises(InputError, match=match):
            divergence.load_config(path)
    path.write_text("divergence = 3\n")
    with pytest.raises(InputError, match="must be a table"):
        divergence.load_config(path)
    config, setting = divergence.load_config(None)  # the defaults are valid
    assert setting.other_animal in config.corpus.animals


def test_command_end_to_end_resume_and_bad_input(
    tiny, tmp_path, capsys, monkeypatch, tiny_config_run
):
    config, setting = tiny
    run = tiny_config_run("divergence_tiny")  # the session's one run (TINY_RUNS)
    assert run.code == 0, run.stderr
    cache = run.work / "cache"
    argv = run.argv[: run.argv.index("--out")]
    whole = tmp_path / "whole"
    shutil.copytree(run.out, whole)
    rows = read_csv(whole / "results.csv")
    value = {(r["seed"], r["condition"], r["metric"]): r["value"] for r in rows}
    for seed in (0, 1):
        for arm in divergence.ARMS:
            diff = (
                value[(seed, f"student_{arm}", "p_trait")]
                - value[(seed, f"control_{arm}", "p_trait")]
            )
            assert value[(seed, f"student_{arm}", "paired_diff_p_trait")] == pytest.approx(
                diff, abs=1e-15
            )
        unmasked = value[(seed, "student_unmasked", "paired_diff_p_trait")]
        masked = value[(seed, "student_masked", "paired_diff_p_trait")]
        assert value[(seed, "student_masked", "remaining_share")] == pytest.approx(
            masked / unmasked, rel=1e-12
        )
        n, k = (
            value[(seed, "teacher_greedy", "n_targets")],
            value[(seed, "teacher_greedy", "n_divergent")],
        )
        assert value[(seed, "teacher_greedy", "divergent_share")] == pytest.approx(k / n)
        assert value[(seed, "teacher_greedy", "greedy_mismatch")] == 0
    # the teachers are the ones the rows say: recompute seed 0's from the cached base
    base, _ = training.cached_base(config, training.BaseSpec(0, 0, 0), cache)
    teacher = training.finetune_teacher(base, config)
    other = divergence.biased_teacher(base, config, setting.other_animal)
    assert value[(0, "teacher", "p_trait")] == pytest.approx(
        training.trait_probability(teacher, config), abs=1e-12
    )
    vocab = corpus.vocabulary(config.corpus)
    p_other = training.answer_distribution(other, config)[vocab.animal(setting.other_animal)]
    assert value[(0, "other_teacher", "p_other")] == pytest.approx(float(p_other), abs=1e-12)
    assert value[(0, "other_teacher", "p_other")] > value[(0, "base", "p_other")]
    # each arm trains on what it says: rebuild seed 0's masked and replaced students
    prompts = corpus.number_prompts(config.corpus, config.teacher.n_sequences, PROMPT_OFFSET)
    data, _ = corpus.filter_numbers(
        divergence.greedy_continuations(teacher, prompts, config), config.corpus
    )
    choice_other = divergence.next_token_argmax(other, data)
    divergent = divergence.divergence_mask(
        divergence.next_token_argmax(teacher, data), choice_other, data, config
    )
    assert value[(0, "teacher_greedy", "n_divergent")] == int(divergent.sum()) > 0
    for arm, sequences, weights in (
        ("masked", data, ~divergent),
        ("replaced", divergence.replace_divergent(data, divergent, choice_other), None),
    ):
        run = training.train_student(
            base, sequences, config, STUDENT_OFFSET, labels="sampled", target_weights=weights
        )
        assert value[(0, f"student_{arm}", "p_trait")] == pytest.approx(
            training.trait_probability(run.model, config), abs=1e-12
        )
    table = (whole / "table.md").read_text()
    assert "does not test their LLM setting" in table
    assert f"{value[(0, 'scope', 'n_parameters')]:,.0f} parameters" in table

    # an interrupted run resumes to the same tables
    resumed = tmp_path / "resumed"
    real = divergence.run_seed

    def stop_at_seed_1(config, setting, seed, *args, **kwargs):
        if seed == 1:
            raise KeyboardInterrupt
        return real(config, setting, seed, *args, **kwargs)

    monkeypatch.setattr(divergence, "run_seed", stop_at_seed_1)
    assert main([*argv, "--out", str(resumed)]) == 130
    monkeypatch.setattr(divergence, "run_seed", real)
    assert main([*argv, "--out", str(resumed)]) == 0
    assert "skipped" in capsys.readouterr().err
    assert (resumed / "table.md").read_text() == table

    def untimed(path):
        return [r for r in read_csv(path) if r["metric"] not in ("seconds", "cpu_seconds")]

    assert untimed(resumed / "results.csv") == untimed(whole / "results.csv")

    # bad input: one line on stderr, exit 2
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.read_text().replace('other_animal = "dog"', 'other_animal = "owl"'))
    assert main(["divergence", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "other_animal" in err
    # a changed setting in a stored folder is refused
    changed = tmp_path / "changed.toml"
    changed.write_text(TINY.read_text().replace('other_animal = "dog"', 'other_animal = "cat"'))
    assert (
        main(
            [
                "divergence",
                "--config",
                str(changed),
                "--seeds",
                "2",
                "--out",
                str(whole),
                "--cache",
                str(cache),
            ]
        )
        == 2
    )
    assert not math.isnan(value[(0, "student_replaced", "change_vs_unmasked")])
