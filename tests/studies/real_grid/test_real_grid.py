"""The real-model optimizer x method grid on a tiny random Llama (same code path as SmolLM2).

Oracles: ``train_student`` with each optimizer against a plain hand-written float64 loop (the
same batches, the update written out: Adam's moments, w - lr g, w - lr sign g); the default
optimizer against the loop train_student ran before the optimizer choice existed (torch's Adam,
float32, bit for bit); the command end to end, resumed, and refusing bad input with one line.
"""

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from sublim_theory.cli.main import main  # noqa: E402
from sublim_theory.errors import InputError  # noqa: E402
from sublim_theory.harness.runs import CONFIG_DIR  # noqa: E402
from sublim_theory.models.pretrained import float64_throughout  # noqa: E402
from sublim_theory.studies.real_grid import experiment as E  # noqa: E402
from sublim_theory.studies.real_grid import report as R  # noqa: E402
from sublim_theory.testbeds.real_lm import prompts as P  # noqa: E402
from sublim_theory.testbeds.real_lm.train import (  # noqa: E402
    completion_loss,
    prepare_student,
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


def _hand_loop(model, tokenizer, examples, method, optimizer, lr, steps, batch, seed):
    """The update of each optimizer written out, on the parameters prepare_student trains."""
    student = prepare_student(model, method, rank=2, seed=seed)
    params = [p for p in student.parameters() if p.requires_grad]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    losses = []
    for t, indices in enumerate(_batches(len(examples), batch, steps, seed), start=1):
        loss = completion_loss(student, tokenizer, [examples[i] for i in indices])
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
    for name in ("real_grid_default", "real_grid_tiny", "real_grid_gpu"):
        config = E.load_config(CONFIG_DIR / f"{name}.toml")
        units = E.plan_units(config, [0, 1])
        assert len({u.key for u in units}) == len(units)
        assert all(r < 576 for r in config.ranks)  # genuinely low rank on SmolLM2


def test_bad_config_is_refused(tmp_path, model_dir):
    with pytest.raises(InputError, match="optimizer"):
        E.load_config(_config(tmp_path, model_dir, optimizers='["adam", "lion"]'))
    with pytest.raises(InputError, match="KIND-ANIMAL"):
        E.load_config(_config(tmp_path, model_dir, arms='["owl"]'))


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
