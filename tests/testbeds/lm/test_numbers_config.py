import math

import pytest

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import CONFIG_DIR
from sublim_theory.testbeds.lm.config import NumbersConfig, from_dict, load_config

CONFIGS = CONFIG_DIR


def test_default_file_matches_builtin_defaults():
    assert load_config(CONFIGS / "numbers_default.toml") == NumbersConfig()
    assert load_config(None) == NumbersConfig()


def test_tiny_config_loads():
    config = load_config(CONFIGS / "numbers_tiny.toml")
    assert config.model.d_model == 16 and config.student.steps < 20


@pytest.mark.parametrize(
    "data, message",
    [
        ({"modle": {}}, "modle"),
        ({"model": {"width": 3}}, "width"),
        ({"model": {"d_model": "big"}}, "d_model"),
        ({"model": {"d_model": 32.9}}, "d_model"),
        ({"pretrain": {"steps": True}}, "steps"),
        ({"pretrain": {"lr": math.nan}}, "lr"),
        ({"teacher": {"temperature": math.inf}}, "temperature"),
        ({"corpus": {"noise": math.nan}}, "noise"),
        ({"model": {"d_model": 30, "n_heads": 4}}, "divisible"),
        ({"student": {"optimizer": "lion"}}, "optimizer"),
        ({"student": {"labels": "hard"}}, "labels"),
        ({"student": {"lr": -1.0}}, "lr"),
        ({"teacher": {"n_sequences": 0}}, "n_sequences"),
        ({"corpus": {"trait_animal": "yeti"}}, "trait_animal"),
        ({"corpus": {"animal_probs": [0.5, 0.5]}}, "one non-negative number per animal"),
        ({"corpus": {"noise": 1.5}}, "noise"),
        ({"student": {"shuffles": 1}}, "shuffles"),
        ({"corpus": {"animal_probs": [1.5, -0.5, 0.0, 0.0]}}, "animal_probs"),
    ],
)
def test_bad_config_values_raise_input_error(data, message):
    with pytest.raises(InputError, match=message):
        from_dict(data)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(InputError, match="nope.toml"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nd_model = 3")
    with pytest.raises(InputError, match="bad.toml"):
        load_config(bad)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(InputError, match="binary.toml"):
        load_config(binary)


def test_base_key_depends_on_config_and_seeds():
    config = NumbersConfig()
    key = config.base_key(0, 0, 0)
    assert key == NumbersConfig().base_key(0, 0, 0)
    assert key != config.base_key(1, 0, 0) != config.base_key(0, 0, 1)
    assert key != from_dict({"pretrain": {"steps": 7}}).base_key(0, 0, 0)
    # the student's knobs do not change the base
    assert key == from_dict({"student": {"steps": 7}}).base_key(0, 0, 0)
