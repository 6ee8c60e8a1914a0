"""The command line's boundary: user-caused failures are one line before any work (issue 11).

Each case names what the user did wrong in one line on stderr with exit status 2 (Ctrl-C: one
line, 130), and the expensive step it would have wasted is replaced by a function that fails
the test if it is ever called.
"""

import gzip
from pathlib import Path

import pytest
import torch

import sublim_theory.cli.check as check_command
import sublim_theory.cli.demo as demo_command
import sublim_theory.cli.derive as derive_command
import sublim_theory.studies.bench.experiment as bench
import sublim_theory.studies.mnist.study as mnist_command
from sublim_theory.cli.main import main
from sublim_theory.harness.runs import CONFIG_DIR, OutputFolder
from sublim_theory.studies.numbers import experiment as numbers_experiment
from sublim_theory.testbeds.mnist.data import IDX_FILES

CONFIGS = CONFIG_DIR
MNIST_TINY = CONFIGS / "mnist_tiny.toml"
NUMBERS_TINY = CONFIGS / "numbers_tiny.toml"


def _never(name):
    def called(*args, **kwargs):
        raise AssertionError(f"{name} ran although the input was bad")

    return called


@pytest.fixture
def no_compute(monkeypatch):
    """Every expensive step of every command fails the test if it runs."""
    for module, name in (
        (mnist_command, "run_experiment"),
        (mnist_command, "load_mnist"),
        (numbers_experiment, "run_seed"),
        (bench, "build_case"),
        (bench, "bench_seeds"),
        (bench, "bench_mnist_training"),
        (demo_command, "check"),
        (derive_command, "export_documents"),
    ):
        monkeypatch.setattr(module, name, _never(f"{module.__name__}.{name}"))


def _one_line_error(capsys, command):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"sublim-theory {command}: error: "), err
    return err


# --- case 3: an --out that cannot be written is refused before any compute -------------------
# Tests run as root, for whom chmod does not make a folder unwritable: a path under a regular
# FILE cannot be created by anyone.
COMMANDS_WITH_OUT = {
    "mnist": ["mnist", "--config", str(MNIST_TINY), "--quiet"],
    "numbers": ["numbers", "--config", str(NUMBERS_TINY), "--seeds", "1"],
    "bench": ["bench", "--size", "tiny", "--archs", "mlp", "--seeds", "0", "--mnist-models", "0"],
    "demo": ["demo"],
    "derive": ["derive"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS_WITH_OUT))
def test_out_under_a_file_is_one_line_before_any_compute(command, tmp_path, capsys, no_compute):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main([*COMMANDS_WITH_OUT[command], "--out", str(blocker / "sub")]) == 2
    assert str(blocker) in _one_line_error(capsys, command)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux procfs")
@pytest.mark.parametrize("command", sorted(COMMANDS_WITH_OUT))
def test_existing_unwritable_out_is_one_line_before_any_compute(command, capsys, no_compute):
    """An existing folder where no file can be created, even by root (procfs).

    ``mkdir(exist_ok=True)`` succeeds there, so only a probe write finds the problem before
    the experiment runs instead of at its first write.
    """
    assert main([*COMMANDS_WITH_OUT[command], "--out", "/proc/self"]) == 2
    assert "/proc/self" in _one_line_error(capsys, command)


def test_folder_in_use_is_refused_at_once(tmp_path, capsys, no_compute):
    with OutputFolder(tmp_path / "out", "mnist"):
        argv = ["mnist", "--config", str(MNIST_TINY), "--out", str(tmp_path / "out")]
        assert main(argv) == 2
    assert "in use" in _one_line_error(capsys, "mnist")


# --- Ctrl-C and the errors main must not swallow ----------------------------------------------
def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(check_command, "check", interrupted)
    assert main(["check"]) == 130
    assert capsys.readouterr().err.strip() == "sublim-theory check: interrupted"


def test_file_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    def missing(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "/data/x.bin")

    monkeypatch.setattr(check_command, "check", missing)
    assert main(["check"]) == 2
    assert "/data/x.bin" in _one_line_error(capsys, "check")
    for bug in (RuntimeError("internal"), OSError("no file named")):

        def failing(*args, bug=bug, **kwargs):
            raise bug

        monkeypatch.setattr(check_command, "check", failing)
        with pytest.raises(type(bug)):
            main(["check"])


# --- case 7: bad values become one line ---------------------------------------------------
@pytest.mark.parametrize(
    "text, key",
    [
        ("student_epochs = true\n", "student_epochs"),
        ("hidden = [32.9, 1.5]\n", "hidden"),
        ("lr = nan\n", "lr"),
        ("temperature = inf\n", "temperature"),
        ("student_noise = [nan]\n", "student_noise"),
        ("models = '10'\n", "models"),
        ("mnist_dir = 5\n", "mnist_dir"),
        ("lr = \n", "config.toml"),  # invalid TOML
    ],
)
def test_mistyped_mnist_config_values(text, key, tmp_path, capsys, no_compute):
    config = tmp_path / "config.toml"
    name = text.split("=")[0].strip()
    kept = [line for line in MNIST_TINY.read_text().splitlines() if not line.startswith(name)]
    config.write_text("\n".join(kept) + "\n" + text)
    assert main(["mnist", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert key in _one_line_error(capsys, "mnist")


def test_binary_config_file(tmp_path, capsys, no_compute):
    config = tmp_path / "config.toml"
    config.write_bytes(gzip.compress(b"models = 2\n"))  # e.g. a .gz passed by mistake
    for argv in (["mnist", "--config", str(config)], ["numbers", "--config", str(config)]):
        assert main([*argv, "--out", str(tmp_path / "out")]) == 2
        assert "config.toml" in _one_line_error(capsys, argv[0])


@pytest.mark.parametrize("flag, value", [("--lr", "nan"), ("--temperature", "inf")])
def test_nan_and_inf_flags_are_refused(flag, value, tmp_path, capsys, no_compute):
    argv = ["mnist", "--config", str(MNIST_TINY), flag, value, "--out", str(tmp_path)]
    assert main(argv) == 2
    assert flag[2:] in _one_line_error(capsys, "mnist")


def test_corrupt_deflate_stream_and_empty_train_file(tmp_path, capsys, monkeypatch, write_digits):
    monkeypatch.setattr(mnist_command, "run_experiment", _never("run_experiment"))
    corrupt = write_digits(tmp_path / "corrupt", compress=True)
    path = corrupt / (IDX_FILES["train_images"] + ".gz")
    blob = path.read_bytes()
    path.write_bytes(blob[:10] + b"\xff" * 40 + blob[-8:])  # gzip header, bad deflate block
    empty = write_digits(tmp_path / "empty", n_train=0)
    for folder, message in ((corrupt, "gzip"), (empty, "0 images")):
        argv = ["mnist", "--config", str(MNIST_TINY), "--mnist-dir", str(folder)]
        assert main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
        err = _one_line_error(capsys, "mnist")
        assert message in err and "train-images" in err


def test_check_eps_whose_square_overflows(capsys):
    assert main(["check", "--eps", "1e300"]) == 2
    assert "eps" in _one_line_error(capsys, "check")


def test_bad_flags_are_one_line(capsys, tmp_path):
    for argv in (
        ["demo", "--device", "tpu"],
        ["numbers", "--out", str(tmp_path), "--threads", "100000"],
        ["check", "--arch", "rnn"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "error: argument" in err, err


# --- validation before the first expensive step ----------------------------------------------
def test_demo_checks_device_and_sweep_config_first(tmp_path, capsys, no_compute):
    missing = ["demo", "--sweep-config", str(tmp_path / "none.toml"), "--out", str(tmp_path)]
    assert main(missing) == 2  # a flag error: refused while parsing
    assert "none.toml" in _one_line_error(capsys, "demo")
    if not torch.cuda.is_available():
        assert main(["demo", "--device", "cuda", "--out", str(tmp_path)]) == 2
        assert "cuda" in _one_line_error(capsys, "demo").lower()


def test_derive_pdf_without_pdflatex(tmp_path, capsys, monkeypatch, no_compute):
    monkeypatch.setenv("PATH", str(tmp_path))  # no pdflatex on this PATH
    assert main(["derive", "--pdf", "--out", str(tmp_path / "out")]) == 2
    assert "pdflatex" in _one_line_error(capsys, "derive")


def test_numbers_cache_that_is_a_file(tmp_path, capsys, no_compute):
    cache = tmp_path / "cache.pt"
    cache.write_text("x")
    argv = ["numbers", "--config", str(NUMBERS_TINY), "--seeds", "1", "--cache", str(cache)]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert "cache.pt" in _one_line_error(capsys, "numbers")
