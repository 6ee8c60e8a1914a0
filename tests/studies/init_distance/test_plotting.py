import shutil

import pytest

from sublim_theory.cli.main import main
from sublim_theory.errors import InputError
from sublim_theory.harness.runs import CONFIG_DIR, OutputFolder
from sublim_theory.studies.init_distance import TABLE_NAME
from sublim_theory.studies.init_distance.plot import (
    alignment_curves,
    load_sweep,
    plot_sweep,
    trajectory_curves,
)

TINY = CONFIG_DIR / "init_distance_tiny.toml"


@pytest.fixture(scope="module")
def table_only(tmp_path_factory, tiny_config_run):
    """A directory holding only the tiny sweep's table: the plots may read nothing else."""
    run = tiny_config_run("init_distance_tiny")  # the session's one run (TINY_RUNS)
    assert run.code == 0, run.stderr
    only = tmp_path_factory.mktemp("table_only")
    shutil.copy(run.out / TABLE_NAME, only / TABLE_NAME)
    return only


def test_plot_sweep_draws_every_figure_from_the_table_alone(table_only):
    paths = plot_sweep(table_only)
    names = sorted(p.name for p in paths)
    expected = [
        f"{n}.{s}"
        for n in ("alignment_vs_distance", "collapse", "trajectories")
        for s in ("pdf", "png")
    ]
    assert names == sorted(expected)
    for path in paths:
        assert path.stat().st_size > 5_000
        assert path.read_bytes()[:4] in (b"\x89PNG", b"%PDF")


def test_the_curves_the_figure_draws(table_only):
    """Same numbers as the figure: shared init clearly positive, falling toward zero."""
    rows = load_sweep(table_only)
    curves = alignment_curves(rows, "scaled_noise", 1e-3)
    assert set(curves) == {"mlp", "transformer"}
    for points in curves.values():
        distances = [p["distance_rel"] for p in points]
        assert distances == sorted(distances) and distances[0] == 0
        assert points[0]["cos"] > 0.4 and points[0]["n"] == 3
        for point in points:  # the dots the figure draws are the seeds' own rows
            assert len(point["seeds_cos"]) == 3
            assert sum(point["seeds_cos"]) / 3 == pytest.approx(point["cos"], rel=1e-12)
        assert abs(points[-1]["cos"]) < points[0]["cos"] / 2
    shared = trajectory_curves(rows, "sgd", "shared", "cos_displacement_teacher")
    assert set(shared) == {"mlp", "transformer"}
    for curve in shared.values():
        assert list(curve["step"]) == [1, 2, 3]
        assert (curve["mean"] > 0.3).all()


def test_plot_errors_are_clear(tmp_path):
    with pytest.raises(InputError, match="no sweep table"):
        plot_sweep(tmp_path)
    (tmp_path / TABLE_NAME).write_text("something,else\n1,2\n")
    with pytest.raises(InputError, match="does not have this sweep's columns"):
        plot_sweep(tmp_path)


def _damage(text: str, how: str) -> bytes:
    lines = text.splitlines(keepends=True)
    if how == "truncated":
        return text[:-25].encode()
    if how == "duplicate":  # a second run appended into the same folder
        return (text + "".join(lines[1:4])).encode()
    if how == "missing column":
        cut = [",".join(line.rstrip("\n").split(",")[:-1]) + "\n" for line in lines]
        return "".join(cut).encode()
    if how == "non-numeric":
        cells = lines[5].split(",")
        cells[14] = "0.1x"
        return "".join([*lines[:5], ",".join(cells), *lines[6:]]).encode()
    if how == "binary":
        return b"\x89PNG\r\n\x1a\n\x00" + text.encode()
    raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated", "incomplete line"),
        ("duplicate", "repeats line 2"),
        ("missing column", "missing column"),
        ("non-numeric", "'0.1x' is not a number"),
        ("binary", "binary file"),
    ],
)
def test_plot_refuses_a_damaged_table_in_one_line(table_only, tmp_path, capsys, how, message):
    """Each damage that would silently change a figure (n doubled, a row lost) is exit 2."""
    (tmp_path / TABLE_NAME).write_bytes(_damage((table_only / TABLE_NAME).read_text(), how))
    assert main(["plot", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and error.count("\n") == 0
    assert not list(tmp_path.glob("*.png"))


def test_plot_command_refuses_a_folder_in_use_or_missing(table_only, tmp_path, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(table_only, folder)
    with OutputFolder(folder, "sweep"):  # a sweep still writing into the folder
        assert main(["plot", str(folder)]) == 2
        assert "in use by another sublim-theory run" in capsys.readouterr().err
    assert main(["plot", str(folder)]) == 0
    assert main(["plot", str(tmp_path / "absent")]) == 2
    assert not (tmp_path / "absent").exists()  # refused, not created
