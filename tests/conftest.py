import os

import pytest
import torch
from hypothesis import settings

# Hypothesis loads its built-in "ci" profile (derandomized, more examples) when CI is set.
# Locally, keep the default profile but without deadlines: torch's first calls are slow.
settings.register_profile("dev", deadline=None, max_examples=40)
if not os.environ.get("CI"):
    settings.load_profile("dev")

# Test models are tiny: one intra-op thread is fastest, and two thrash on a loaded machine.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class SmallDisk:
    """A folder whose filesystem can be filled (ENOSPC) or made read-only (EROFS) on demand.

    A real tmpfs when this process may mount one (root in a container or CI); else a plain folder
    where a filled disk is injected at ``os.fsync`` of any file in it (every durable write in the
    package syncs before it renames) and read-only is ``chmod 0o555`` (not honoured for root).
    """

    def __init__(self, path, monkeypatch, mounted):
        self.path, self.mounted, self._monkeypatch = path, mounted, monkeypatch
        self._filler = path / ".filler"

    def fill(self):
        """Fill the disk: every later write of data into it fails with ENOSPC."""
        import errno

        if self.mounted:
            descriptor = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                while True:
                    os.write(descriptor, b"\0" * 4096)
            except OSError as error:
                assert error.errno == errno.ENOSPC
            finally:
                os.close(descriptor)
            return
        real = os.fsync

        def fsync(descriptor):
            try:
                target = os.readlink(f"/proc/self/fd/{descriptor}")
            except OSError:
                target = ""
            if target.startswith(str(self.path)):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(descriptor)

        self._monkeypatch.setattr(os, "fsync", fsync)

    def free(self):
        """Undo :meth:`fill`."""
        if self.mounted:
            self._filler.unlink(missing_ok=True)
        else:
            self._monkeypatch.undo()

    def read_only(self):
        """Make the folder read-only (EROFS on a tmpfs, EACCES for a non-root user)."""
        import subprocess

        if self.mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)
        elif os.geteuid() == 0:
            pytest.skip("cannot make a folder read-only for root without mounting a filesystem")
        else:
            self.path.chmod(0o555)  # restored by the fixture


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A :class:`SmallDisk` (32 MiB) under ``tmp_path``; unmounted after the test."""
    import shutil
    import subprocess

    path = tmp_path / "disk"
    path.mkdir()
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        options = "size=32m,mode=0777"
        command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]
        mounted = subprocess.run(command, capture_output=True).returncode == 0
    disk = SmallDisk(path, monkeypatch, mounted)
    yield disk
    if mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
    else:
        path.chmod(0o755)


def _write_digits(folder, n_train=6, n_test=4, compress=False):
    """Random IDX digits (uniform pixels and labels, numpy seed 0) in ``folder``; returns it.

    The draws come in the order train images, train labels, test images, test labels, so a
    folder of one size is the same bytes in every test that asks for it.
    """
    import numpy as np

    from sublim_theory.testbeds.mnist.data import IDX_FILES, write_idx

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for part, n in (("train", n_train), ("test", n_test)):
        write_idx(
            folder / (IDX_FILES[f"{part}_images"] + suffix), rng.integers(0, 256, (n, 28, 28))
        )
        write_idx(folder / (IDX_FILES[f"{part}_labels"] + suffix), rng.integers(0, 10, n))
    return folder


@pytest.fixture(scope="session")
def write_digits():
    """``write_digits(folder, n_train=6, n_test=4, compress=False)``: random IDX digits."""
    return _write_digits


@pytest.fixture(scope="session")
def digit_folder(tmp_path_factory):
    """``digit_folder(n_train, n_test)``: a read-only folder of random IDX digits, one per size."""
    folders = {}

    def folder(n_train, n_test):
        if (n_train, n_test) not in folders:
            made = tmp_path_factory.mktemp(f"digits-{n_train}-{n_test}")
            folders[n_train, n_test] = _write_digits(made, n_train, n_test)
        return folders[n_train, n_test]

    return folder


@pytest.fixture(scope="session")
def fake_mnist():
    """``fake_mnist(n_train, n_test, seed=0)``: separable synthetic digits (``MnistData``).

    Class c lights up pixel block c over 0.3-scaled Gaussian noise: a teacher learns them in a
    few steps, so the MNIST studies run end to end in seconds.
    """
    from sublim_theory.testbeds.mnist.data import MnistData

    def make_data(n_train, n_test, seed=0):
        generator = torch.Generator().manual_seed(seed)

        def make(n):
            labels = torch.randint(0, 10, (n,), generator=generator)
            images = 0.3 * torch.randn(n, 784, generator=generator)
            for c in range(10):
                images[labels == c, c * 78 : (c + 1) * 78] += 1.0
            return images.clamp(-1, 1), labels

        (train_x, train_y), (test_x, test_y) = make(n_train), make(n_test)
        return MnistData(train_x, train_y, test_x, test_y, source="synthetic", split="random")

    return make_data


@pytest.fixture(scope="module")
def one_thread():
    """One torch CPU thread for a module (a command run with ``--threads`` may have changed it).

    Tiny models: a second thread only adds synchronization cost (and spins on a busy machine).
    Use as ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def disk_full_at(monkeypatch):
    """``disk_full_at(fragment)``: the disk is full (ENOSPC at ``os.fsync``) for the files whose
    path holds ``fragment``; other files sync as usual. ``monkeypatch.undo()`` frees it again.

    Skips the test where ``/proc`` cannot tell which file a descriptor writes.
    """
    import errno
    from pathlib import Path

    def fill(fragment):
        if not Path("/proc/self/fd").is_dir():
            pytest.skip("needs /proc to tell which file a descriptor writes")
        real = os.fsync

        def fsync(descriptor):
            if fragment in os.readlink(f"/proc/self/fd/{descriptor}"):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(descriptor)

        monkeypatch.setattr(os, "fsync", fsync)

    return fill


# --------------------------------------------------------------------------------------------
# every packaged *_tiny config end to end, each run once a session
# --------------------------------------------------------------------------------------------
def _tiny_argv(command, config, *flags):
    """A runner: ``sublim-theory COMMAND --config CONFIG FLAGS --out WORK/out``."""
    from sublim_theory.harness.runs import CONFIG_DIR

    def argv(work):
        extra = [str(work / f.removeprefix("WORK/")) if f.startswith("WORK/") else f for f in flags]
        return [command, "--config", str(CONFIG_DIR / f"{config}.toml"), *extra, "--out",
                str(work / "out")]  # fmt: skip

    return argv


# Run name (the config's stem, ``:COMMAND`` where two commands read one config) -> the command
# line of its one end-to-end run, given a fresh work folder (``WORK/...`` flags live in it). The
# studies' own tests read these runs through ``tiny_config_run`` instead of running them again.
TINY_RUNS = {
    "claims_tiny:adamstate": _tiny_argv(
        "adamstate", "claims_tiny", "--seeds", "2", "--cache", "WORK/cache", "--threads", "1"
    ),
    "claims_tiny:coverage": _tiny_argv(
        "coverage", "claims_tiny", "--seeds", "2", "--cache", "WORK/cache", "--threads", "1"
    ),
    "defenses_tiny": _tiny_argv("defenses", "defenses_tiny", "--seeds", "1", "--threads", "1"),
    "divergence_tiny": _tiny_argv(
        "divergence", "divergence_tiny", "--seeds", "2", "--cache", "WORK/cache", "--threads", "1"
    ),
    "init_distance_tiny": _tiny_argv("sweep", "init_distance_tiny", "--device", "cpu", "--quiet"),
    "numbers_tiny": _tiny_argv("numbers", "numbers_tiny", "--seeds", "2"),
    "projection_tiny": _tiny_argv("projection", "projection_tiny", "--threads", "1"),
    "rules_tiny": _tiny_argv("rules", "rules_tiny", "--quiet"),
    "sign_population_tiny": _tiny_argv("sign-population", "sign_population_tiny"),
}


class TinyRun:
    """One finished end-to-end run of a packaged tiny config (read it; copy before changing it).

    Attributes:
        argv: the command line.
        work: its work folder (``out`` the output folder, ``cache`` where it cached).
        out: ``work / "out"``.
        code: the exit status.
        stdout: what it printed (the tables).
        stderr: its progress lines and errors.
        files: the output folder's files when the run ended, relative path -> bytes.
    """

    def __init__(self, argv, work, code, stdout, stderr):
        self.argv, self.work, self.out, self.code = argv, work, work / "out", code
        self.stdout, self.stderr = stdout, stderr
        self.files = {
            str(p.relative_to(self.out)): p.read_bytes()
            for p in sorted(self.out.rglob("*"))
            if p.is_file()
        }


@pytest.fixture(scope="session")
def tiny_run_names():
    """The names of ``TINY_RUNS`` (a fixture: test modules cannot import this conftest by name,
    since the whole suite has several ``conftest`` modules)."""
    return list(TINY_RUNS)


@pytest.fixture(scope="session")
def tiny_config_run(tmp_path_factory):
    """``tiny_config_run(name)``: the :class:`TinyRun` of ``TINY_RUNS[name]``, run on first request."""
    import contextlib
    import io

    from sublim_theory.cli.main import main

    runs = {}

    def get(name):
        if name not in runs:
            work = tmp_path_factory.mktemp(name.replace(":", "-"))
            argv = TINY_RUNS[name](work)
            stdout, stderr = io.StringIO(), io.StringIO()
            threads = torch.get_num_threads()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = main(argv)
            torch.set_num_threads(threads)  # a run's --threads must not leak into later tests
            runs[name] = TinyRun(argv, work, code, stdout.getvalue(), stderr.getvalue())
        return runs[name]

    return get
