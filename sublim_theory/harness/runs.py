"""What every command does around its computation: read a config, own an output folder, write safely.

One mechanism for the sweep, MNIST, numbers, bench, demo, derive and plot commands:

- ``load_toml`` + ``parse_config``: a TOML file becomes a frozen dataclass whose fields are
  checked against their type annotations (true ints, finite floats, non-empty tuples, choices)
  and the ranges given by :func:`bound`; a typo lists the allowed keys.
- ``OutputFolder``: creates the output folder, proves it is writable and takes an exclusive lock
  on it *before* any compute; ``check_settings`` records what shapes the folder's rows and
  refuses a rerun with other settings (a rerun that only adds grid values is allowed).
- ``atomic_write_text`` / ``atomic_write_json`` (temp file + fsync + rename) and
  ``append_durably`` (append + fsync): a killed run never leaves a half-written table or JSON.
- ``resolve_device`` and the dtype names every command shares.

Every failure caused by the user's input or files is an :class:`InputError` with one line saying
what was wrong and what to do.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import fcntl
import hashlib
import importlib.resources
import io
import json
import math
import os
import tempfile
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sublim_theory.errors import InputError

__all__ = [
    "CONFIG_DIR",
    "DTYPES",
    "LOCK_NAME",
    "RUN_RECORD_NAME",
    "OutputFolder",
    "append_durably",
    "atomic_save_figure",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
    "bound",
    "config_file",
    "dtype_from_name",
    "dtype_name",
    "fingerprint",
    "load_table",
    "load_toml",
    "parse_config",
    "read_csv",
    "resolve_device",
    "write_failure",
]

DTYPES = {"float64": torch.float64, "float32": torch.float32}
# The configs ship inside the package (also in a wheel); experiments/configs links here.
CONFIG_DIR = Path(str(importlib.resources.files("sublim_theory") / "configs"))
LOCK_NAME = ".sublim-theory.lock"
RUN_RECORD_NAME = "run.json"


# --------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------
def load_toml(path: str | os.PathLike[str], what: str = "config") -> dict[str, Any]:
    """Read a TOML file into a dict.

    Args:
        path: the file.
        what: how to name the file in error messages (e.g. ``"sweep config"``).

    Returns:
        The parsed TOML tables.

    Raises:
        InputError: the file is missing, unreadable, not UTF-8 text, or not valid TOML.

    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} '{path}' does not exist; check the path") from None
    except IsADirectoryError:
        raise InputError(f"{what} '{path}' is a folder; pass a TOML file") from None
    except OSError as error:
        raise InputError(f"cannot read {what} '{path}': {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise InputError(f"{what} '{path}' is not text (not UTF-8); pass a TOML file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{what} '{path}' is not valid TOML: {error}") from None


def load_table(path: str | os.PathLike[str], table: str) -> dict[str, Any]:
    """The one ``[table]`` of a TOML config that holds nothing else.

    Returns:
        The table's keys and values.

    Raises:
        InputError: the file is unreadable or not TOML (:func:`load_toml`), has no ``[table]``,
            or has another key or table beside it (a misplaced setting is refused, not dropped).

    """
    raw = load_toml(path)
    if table not in raw:
        raise InputError(f"'{path}' has no [{table}] table; see configs/{table}_*.toml")
    stray = sorted(set(raw) - {table})
    if stray:
        raise InputError(
            f"'{path}': unknown key(s) or table(s) {stray} beside [{table}]; "
            f"put every setting inside [{table}]"
        )
    return raw[table]


def config_file(value: str | os.PathLike[str]) -> Path:
    """A config given as a path, or by the name of a packaged config (``init_distance_tiny``).

    Used as the argparse type of every ``--config`` flag, so a bad value fails before any work.

    Returns:
        The path of the TOML file.

    Raises:
        InputError: neither an existing file nor the name of a packaged config.

    """
    path = Path(value)
    if path.is_file():
        return path
    packaged = CONFIG_DIR / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    if len(path.parts) == 1 and packaged.is_file():
        return packaged
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
    raise InputError(
        f"config '{value}' is not a file; pass a TOML file or a packaged config: {', '.join(names)}"
    )


def bound(
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> dict[str, dict[str, float]]:
    """Field metadata for :func:`parse_config`: the allowed range of a number (or of each item).

    Use as ``lr: float = field(default=3e-4, metadata=bound(gt=0))``.

    Returns:
        The metadata mapping ``{"bound": {...}}``.

    """
    limits = {"gt": gt, "ge": ge, "lt": lt, "le": le}
    return {"bound": {name: value for name, value in limits.items() if value is not None}}


_RELATIONS = {
    "gt": (lambda x, b: x > b, "> {}"),
    "ge": (lambda x, b: x >= b, ">= {}"),
    "lt": (lambda x, b: x < b, "< {}"),
    "le": (lambda x, b: x <= b, "<= {}"),
}


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a finite number"
    if annotation is bool:
        return "true or false"
    if annotation is str:
        return "a string"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(annotation))
    if origin is tuple:
        return f"a non-empty list of {_type_name(typing.get_args(annotation)[0])[2:]}s"
    if dataclasses.is_dataclass(annotation):
        return "a table"
    if origin is dict:
        return "a table"
    return str(annotation)


def _convert(value: Any, annotation: Any, where: str, limits: Mapping[str, float]) -> Any:
    """Check ``value`` against ``annotation`` (and ``limits``); return it in its frozen form."""
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        others = [a for a in arguments if a is not type(None)]
        if len(others) == 1:
            return _convert(value, others[0], where, limits)
        for option in others:
            try:
                return _convert(value, option, where, limits)
            except InputError:
                continue
        raise InputError(f"{where} must be {' or '.join(_type_name(a) for a in others)}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise InputError(f"{where} must be a table, got {value!r}")
        return parse_config(annotation, value, where)
    if origin is typing.Literal:
        if value not in arguments or isinstance(value, bool) != any(
            isinstance(a, bool) for a in arguments
        ):
            raise InputError(f"{where} must be {_type_name(annotation)}, got {value!r}")
        return value
    if origin is tuple:
        item = arguments[0]
        if not isinstance(value, list | tuple) or not value:
            raise InputError(f"{where} must be {_type_name(annotation)}, got {value!r}")
        return tuple(_convert(x, item, f"{where}[{i}]", limits) for i, x in enumerate(value))
    if origin is dict:
        key_type, item = arguments
        if not isinstance(value, Mapping) or not value:
            raise InputError(f"{where} must be a non-empty table, got {value!r}")
        return types.MappingProxyType(
            {str(k): _convert(x, item, f"{where}.{k}", limits) for k, x in value.items()}
        )
    if annotation is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where} must be true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise InputError(f"{where} must be a string, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where} must be an integer, got {value!r}")
    elif annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise InputError(f"{where} must be a finite number, got {value!r}")
        value = float(value)
    else:
        raise TypeError(f"parse_config cannot check fields annotated {annotation!r}")
    for relation, limit in limits.items():
        holds, text = _RELATIONS[relation]
        if not holds(value, limit):
            raise InputError(f"{where} must be {text.format(limit)}, got {value!r}")
    return value


def parse_config(cls: type, raw: Mapping[str, Any], source: str = "config") -> Any:
    """Build the frozen dataclass ``cls`` from ``raw``, checking every field.

    Each field is checked against its annotation: ``int`` (a true integer, not a bool or 32.9),
    ``float`` (finite), ``bool``, ``str``, ``tuple[T, ...]`` (from a non-empty list),
    ``dict[str, T]`` (a non-empty table), ``Literal[...]`` (the choices), ``T | None``, or another
    dataclass (a nested table); numbers are range-checked by the field's :func:`bound` metadata.

    Args:
        cls: a dataclass type (declare it ``frozen=True``).
        raw: the values, e.g. a TOML table; missing keys take the dataclass defaults.
        source: where the values came from, for error messages (a file name, ``file [table]``).

    Returns:
        An instance of ``cls``.

    Raises:
        InputError: an unknown key (the message lists the allowed ones), a missing required key,
            a value of the wrong type or out of range.

    """
    if not isinstance(raw, Mapping):
        raise InputError(f"{source} must be a table of settings, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise InputError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, spec in fields.items():
        if name not in raw:
            no_default = spec.default is dataclasses.MISSING
            if no_default and spec.default_factory is dataclasses.MISSING:
                raise InputError(f"{source}: missing key '{name}' ({_type_name(hints[name])})")
            continue
        limits = spec.metadata.get("bound", {})
        values[name] = _convert(raw[name], hints[name], f"{source}: {name}", limits)
    return cls(**values)


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A short hash of ``settings`` (canonical JSON: sorted keys, floats by repr).

    Returns:
        16 hexadecimal characters.

    """
    text = json.dumps(_plain(settings), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """Dataclasses, mapping proxies and tuples as JSON-ready dicts and lists; NaN/inf as None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(x) for k, x in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(x) for x in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------------------------
# durable writes
# --------------------------------------------------------------------------------------------
def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some filesystems cannot fsync a folder; the rename is still atomic
    finally:
        os.close(descriptor)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically; see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_csv(
    path: str | os.PathLike[str], rows: Iterable[dict], columns: list[str]
) -> None:
    """Replace ``path`` with a CSV of dict ``rows`` (header ``columns``) atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def read_csv(
    path: str | os.PathLike[str],
    schema: Mapping[str, Callable[[str], Any]] | None = None,
    *,
    other: Callable[[str], Any] | None = None,
    columns: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The rows of a CSV a command wrote (``atomic_write_csv``), cells parsed by a column schema.

    Args:
        path: the file.
        schema: column -> the parser of its cells (``int``, ``float``, ...); each column must
            be present.
        other: the parser of every column not in ``schema`` (None: kept as text).
        columns: the header the file must have, every row whole (None: any header, rows as
            ``csv.DictReader`` reads them).

    Returns:
        One dict a row, keys in the header's order.

    Raises:
        ValueError: with ``columns``, another header or a row of another width; a cell its
            parser refuses.
        KeyError: a column of ``schema`` the file lacks.

    """
    schema = schema or {}
    if columns is None:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    else:
        lines = list(csv.reader(io.StringIO(Path(path).read_text())))
        if not lines or tuple(lines[0]) != tuple(columns):
            raise ValueError(f"{path} has other columns")
        if any(len(cells) != len(columns) for cells in lines[1:]):
            raise ValueError(f"{path} has a cut row")
        rows = [dict(zip(columns, cells)) for cells in lines[1:]]
    for row in rows:
        for name in schema:
            row[name] = schema[name](row[name])
        if other is not None:
            for name, cell in row.items():
                if name not in schema:
                    row[name] = other(cell)
    return rows


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: readers see the old file or the new one, whole.

    Raises:
        InputError: the folder is not writable.
        OSError: the write failed (a full disk, an I/O error); it names ``path``, and no
            temporary file is left behind.

    """
    path = Path(path)
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as error:
        raise InputError(f"cannot write '{path}': {error.strerror or error}") from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as error:  # a full disk, a quota: the old file stays whole
        Path(temporary).unlink(missing_ok=True)
        raise InputError(write_failure(path, error)) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def atomic_save_figure(figure: Any, path: str | os.PathLike[str], **options: Any) -> None:
    """Save a matplotlib figure atomically (format from the suffix; ``options`` to savefig)."""
    path = Path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip("."), **options)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_json(path: str | os.PathLike[str], record: Any) -> None:
    """Write ``record`` as JSON (sorted keys, indent 2, NaN/inf as null) atomically."""
    text = json.dumps(_plain(record), indent=2, sort_keys=True, default=str, allow_nan=False)
    atomic_write_text(path, text + "\n")


def write_failure(path: str | os.PathLike[str], error: OSError) -> str:
    """An OSError met while writing ``path`` as one line that names the file.

    ``os.write`` on a full disk raises ``OSError(ENOSPC)`` without a file name, which the CLI
    would print as a traceback; raised as ``InputError(write_failure(path, error))`` it is one
    line and exit 2.

    Returns:
        The message.

    """
    reason = error.strerror or type(error).__name__
    return (
        f"cannot write '{path}' ({reason}); free space or fix permissions and rerun "
        "(finished units are kept)"
    )


def append_durably(path: str | os.PathLike[str], text: str) -> None:
    """Append ``text`` with O_APPEND writes, then fsync: once this returns, the rows are on disk.

    All or nothing: when a write fails (a full disk) the file is cut back to its old end, so no
    half-written row stays behind.

    Raises:
        InputError: the file cannot be opened or written (naming it); it is left as it was.

    """
    data = text.encode()
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as error:
        raise InputError(write_failure(path, error)) from None
    try:
        start = os.fstat(descriptor).st_size
        try:
            while data:
                written = os.write(descriptor, data)
                data = data[written:]
            os.fsync(descriptor)
        except OSError as error:
            os.ftruncate(descriptor, start)  # shrinking needs no space
            raise InputError(write_failure(path, error)) from None
    finally:
        os.close(descriptor)


# --------------------------------------------------------------------------------------------
# the output folder
# --------------------------------------------------------------------------------------------
def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


class OutputFolder:
    """An experiment's output folder, created, probed and locked before any compute.

    Use as a context manager::

        with OutputFolder(args.out, "mnist") as folder:
            folder.check_settings(settings, grid={"models": list(range(n))})
            ...
            atomic_write_json(folder.path / "results.json", results)

    On entry the folder is created (with its parents), a temporary file is written and removed
    to prove it is writable, and an exclusive lock (``flock`` on ``DIR/.sublim-theory.lock``) is
    taken for the whole run, so a second run on the same folder is refused at once instead of
    writing every row twice. The lock is released on exit, also when the run fails or is killed.
    """

    def __init__(self, path: str | os.PathLike[str], command: str) -> None:
        """Name the folder and the command; nothing is touched until :meth:`open`."""
        self.path = Path(path)
        self.command = command
        self._lock: int | None = None

    def __enter__(self) -> OutputFolder:
        """Create, probe and lock the folder (:meth:`open`)."""
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Release the lock (:meth:`close`), also after an error."""
        self.close()

    def open(self) -> None:
        """Create, probe and lock the folder.

        Raises:
            InputError: the folder cannot be created or written, or another run holds it.
            OSError: the lock file cannot be locked for a reason other than another holder.

        """
        where = f"--out '{self.path}'"
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{where} is a file, not a folder; choose another --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            descriptor, probe = tempfile.mkstemp(prefix=".probe.", dir=self.path)
            os.close(descriptor)
            os.unlink(probe)
        except OSError as error:
            reason = error.strerror or type(error).__name__
            if isinstance(error, FileExistsError | NotADirectoryError):
                reason = "a part of the path is a file"
            raise InputError(
                f"{where} cannot be created or written ({reason}); choose a writable folder"
            ) from None
        lock_path = self.path / LOCK_NAME
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(descriptor)
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = lock_path.read_text().strip() or "unknown"
            raise InputError(
                f"{where} is in use by another sublim-theory run (pid {holder}); wait for it "
                "to finish or choose another --out"
            ) from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        self._lock = descriptor

    def close(self) -> None:
        """Release the lock (the lock file stays; it is harmless and reused)."""
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None

    def check_settings(
        self, settings: Mapping[str, Any], grid: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record what shapes this folder's rows; refuse a rerun that would mix other settings.

        Args:
            settings: every setting that shapes a row other than the grid (model sizes, steps,
                learning rates, data, dtype, ...). Must be equal on every rerun.
            grid: the values the run iterates over (seeds, models, architectures, ...), each a
                list (or a table of lists). A rerun may add values (the new ones are computed);
                it may not remove any.

        Returns:
            The record written to ``DIR/run.json``.

        Raises:
            InputError: the folder holds a run of another command, other settings or a larger
                grid, or its run.json is corrupt.

        """
        grid = {} if grid is None else grid
        record = {
            "command": self.command,
            "settings": _plain(settings),
            "grid": _plain(grid),
            "fingerprint": fingerprint(settings),
        }
        path = self.path / RUN_RECORD_NAME
        if path.exists():
            self._compare(path, record)
        atomic_write_json(path, record)
        return record

    def _compare(self, path: Path, record: dict[str, Any]) -> None:
        advice = f"use a new --out folder (or delete '{self.path}' to start over)"
        try:
            old = json.loads(path.read_text())
            old_settings, old_grid = old["settings"], old["grid"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            raise InputError(
                f"'{path}' is corrupt, so the rows in '{self.path}' cannot be matched to "
                f"their settings; {advice}"
            ) from None
        if old.get("command") != self.command:
            raise InputError(
                f"'{self.path}' holds results of `{old.get('command')}`, not `{self.command}`; "
                f"{advice}"
            )
        before, after = _flatten(old_settings), _flatten(record["settings"])
        for key in sorted(set(before) | set(after)):
            if before.get(key, "<unset>") != after.get(key, "<unset>"):
                raise InputError(
                    f"'{self.path}' holds a run with other settings ({key}: "
                    f"{before.get(key, '<unset>')!r} -> {after.get(key, '<unset>')!r}); {advice}"
                )
        before, after = _flatten(old_grid), _flatten(record["grid"])
        for key, values in before.items():
            kept = after.get(key)
            missing = [x for x in values if kept is None or x not in kept]
            if missing:
                raise InputError(
                    f"'{self.path}' holds rows for {key} = {missing} that this run leaves out; "
                    f"{advice}, or add those values back"
                )


# --------------------------------------------------------------------------------------------
# devices and dtypes
# --------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """The device a command runs on.

    Args:
        name: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        The torch device.

    Raises:
        InputError: an unknown name, or CUDA asked for where there is none.

    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    head, _, index = str(name).partition(":")
    if head != "cuda" or (index and not index.isdigit()):
        raise InputError(f"unknown device '{name}'; choose auto, cpu or cuda")
    if not torch.cuda.is_available():
        raise InputError(f"device '{name}' was asked for but no CUDA GPU is available; use cpu")
    if index and int(index) >= torch.cuda.device_count():
        raise InputError(
            f"device '{name}' does not exist: this machine has {torch.cuda.device_count()} GPU(s)"
        )
    return torch.device(name)


def dtype_from_name(name: str) -> torch.dtype:
    """``"float64"`` -> ``torch.float64``.

    Returns:
        The torch dtype.

    Raises:
        InputError: a name outside :data:`DTYPES`.

    """
    try:
        return DTYPES[name]
    except KeyError:
        raise InputError(f"unknown dtype '{name}'; choose from {sorted(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float64`` -> ``"float64"``."""
    return str(dtype).removeprefix("torch.")
