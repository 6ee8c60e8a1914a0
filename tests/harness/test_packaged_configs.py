"""Every packaged config parses through the loader of the command that consumes it (issue 20
item 5).

``LOADERS`` maps a config-name prefix to that loader (the longest matching prefix wins). A
packaged ``configs/*.toml`` that no prefix claims fails (a new config must name its loader
here), and so does one its loader refuses. Only parsing: no model is built, no data is read.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from sublim_theory.errors import InputError
from sublim_theory.harness.runs import CONFIG_DIR, load_toml
from sublim_theory.studies.claims import config as claims_config
from sublim_theory.studies.defenses import experiment as defenses
from sublim_theory.studies.divergence import experiment as divergence
from sublim_theory.studies.dynamics import study as dynamics
from sublim_theory.studies.finetune import variants as finetune
from sublim_theory.studies.init_distance import config as init_distance
from sublim_theory.studies.mnist import study as mnist
from sublim_theory.studies.real_cross import experiment as real_cross
from sublim_theory.studies.real_grid import experiment as real_grid
from sublim_theory.studies.real_numbers import experiment as real_numbers
from sublim_theory.studies.real_screen import experiment as real_screen
from sublim_theory.studies.rules import experiment as rules
from sublim_theory.studies.screen import experiment as screen
from sublim_theory.studies.screen_projection import experiment as projection
from sublim_theory.studies.sign_population import experiment as sign_population
from sublim_theory.testbeds.lm import config as numbers


def _screen(path: Path) -> object:
    # cli/screen.py -> studies.screen.study.build: load_toml then experiment_config
    return screen.experiment_config(load_toml(path), source=str(path))


def _projection(path: Path) -> object:
    # cli/projection.py -> studies.screen_projection.study.build: the same two steps
    return projection.experiment_config(load_toml(path), source=str(path))


def _mnist(path: Path) -> object:
    # cli/mnist.py -> resolve_settings, then run_mnist's first check, build_cells (no digits read)
    settings, _folder = mnist.resolve_settings(path, {})
    return mnist.build_cells(settings, str(path))


def _dynamics(path: Path) -> object:
    # cli/dynamics.py -> studies.dynamics.study.resolve_config (no digits read)
    return dynamics.resolve_config(path, {})


LOADERS: dict[str, Callable[[Path], object]] = {
    "numbers_": numbers.load_config,  # numbers (studies.numbers.study.build: from_dict)
    "claims_": claims_config.load_config,  # adamstate, coverage
    "defenses_": defenses.load_config,  # defenses
    "divergence_": divergence.load_config,  # divergence
    "finetune_": finetune.load_config,  # finetune
    "projection_": _projection,  # projection
    "screen_": _screen,  # screen
    "real_numbers_": real_numbers.load_config,  # real
    "real_screen_": real_screen.load_config,  # realscreen
    "real_grid_": real_grid.load_config,  # realgrid
    "real_cross_": real_cross.load_config,  # realcross
    "rules_": rules.load_rules_config,  # rules
    "sign_population_": sign_population.load_config,  # sign-population
    "init_distance": init_distance.load_config,  # sweep, demo
    "mnist_dynamics": _dynamics,  # dynamics
    "mnist_": _mnist,  # mnist
}

PACKAGED = sorted(CONFIG_DIR.glob("*.toml"))


def loader_of(name: str) -> Callable[[Path], object] | None:
    """The loader of the longest prefix of ``name`` in ``LOADERS``; None when none claims it."""
    prefixes = [p for p in LOADERS if name.startswith(p)]
    return LOADERS[max(prefixes, key=len)] if prefixes else None


def with_bogus_key(source: Path, target: Path) -> Path:
    """A copy of ``source`` with ``bogus_key_for_test = 1`` inside its first table (at the top
    when it has none): the table the loader reads, since the real_* loaders read one table."""
    lines = source.read_text().splitlines()
    at = next((i + 1 for i, line in enumerate(lines) if line.lstrip().startswith("[")), 0)
    lines.insert(at, "bogus_key_for_test = 1")
    target.write_text("\n".join(lines) + "\n")
    return target


def test_there_are_packaged_configs():
    assert len(PACKAGED) > 10, CONFIG_DIR


@pytest.mark.parametrize("path", PACKAGED, ids=lambda p: p.name)
def test_a_packaged_config_parses_through_its_loader(path):
    load = loader_of(path.stem)
    if load is None:
        pytest.fail(f"{path.name}: no entry of LOADERS claims it; add its prefix and loader")
    assert load(path) is not None


@pytest.mark.parametrize("path", PACKAGED, ids=lambda p: p.name)
def test_its_loader_refuses_it_with_an_unknown_key(path, tmp_path):
    # the check above can fail: the same loader refuses the same file with one stray key
    load = loader_of(path.stem)
    if load is None:
        pytest.fail(f"{path.name}: no entry of LOADERS claims it; add its prefix and loader")
    with pytest.raises(InputError, match="bogus_key_for_test"):
        load(with_bogus_key(path, tmp_path / path.name))


def test_an_unclaimed_name_has_no_loader(tmp_path):
    assert loader_of("brand_new_study_default") is None
    assert loader_of("real_screen_tiny") is real_screen.load_config  # longest prefix wins
    assert loader_of("mnist_dynamics_tiny") is _dynamics
    assert loader_of("mnist_tiny") is _mnist
    copy = shutil.copy(PACKAGED[0], tmp_path / "brand_new_study_default.toml")
    assert loader_of(Path(copy).stem) is None


REAL_PREFIXES = ("real_numbers_", "real_screen_", "real_grid_", "real_cross_")


@pytest.mark.parametrize(
    "path", [p for p in PACKAGED if p.stem.startswith(REAL_PREFIXES)], ids=lambda p: p.name
)
def test_a_real_loader_refuses_a_stray_top_level_key(path, tmp_path):
    copy = tmp_path / path.name
    copy.write_text("stray_top_key = 1\n" + path.read_text())
    with pytest.raises(InputError, match="stray_top_key"):
        loader_of(path.stem)(copy)
