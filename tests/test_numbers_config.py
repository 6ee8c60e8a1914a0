from pathlib import Path

import pytest

from sublim_theory.errors import InputError
from sublim_theory.numbers.config import NumbersConfig, from_dict, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


def test_default_file_matches_builtin_defaults():
    assert load_config(CONFIGS / "numbers_default.toml") == NumbersConfig()
    assert load_config(None) == NumbersConfig()


def test_tiny_config_loads():
    config = load_config(CONFIGS / "numbers_tiny.toml")
    assert config.model.d_model == 16 and config.student.steps < 20


@pytest.mark.parametrize(
    "data, message",
    [
        ({"modle": {}}, "unknown table"),
        ({"model": {"width": 3}}, "unknown key"),
        ({"model": {"d_model": "big"}}, "must be an integer"),
        ({"model": {"d_model": 30, "n_heads": 4}}, "divisible"),
        ({"student": {"optimizer": "lion"}}, "optimizer"),
        ({"student": {"labels": "hard"}}, "labels"),
        ({"student": {"lr": -1.0}}, "must be > 0"),
        ({"teacher": {"n_sequences": 0}}, ">= 1"),
        ({"corpus": {"trait_animal": "yeti"}}, "trait_animal"),
        ({"corpus": {"animal_probs": [0.5, 0.5]}}, "one non-negative number per animal"),
        ({"corpus": {"noise": 1.5}}, r"\[0, 1\]"),
        ({"student": {"shuffles": 1}}, "true or false"),
    ],
)
def test_bad_config_values_raise_input_error(data, message):
    with pytest.raises(InputError, match=message):
        from_dict(data)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nd_model = 3")
    with pytest.raises(InputError, match="not valid TOML"):
        load_config(bad)


def test_base_key_depends_on_config_and_seeds():
    config = NumbersConfig()
    key = config.base_key(0, 0, 0)
    assert key == NumbersConfig().base_key(0, 0, 0)
    assert key != config.base_key(1, 0, 0) != config.base_key(0, 0, 1)
    assert key != from_dict({"pretrain": {"steps": 7}}).base_key(0, 0, 0)
    # the student's knobs do not change the base
    assert key == from_dict({"student": {"steps": 7}}).base_key(0, 0, 0)
