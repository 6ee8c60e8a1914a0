"""Every module states its public surface (``__all__``), and the tests use only public names."""

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import sublim_theory

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(sublim_theory.__path__, "sublim_theory.")
    if not info.name.rsplit(".", 1)[-1].startswith("_")
)
TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("name", MODULES)
def test_module_lists_its_public_definitions(name):
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    exported = set(module.__all__)
    assert len(exported) == len(module.__all__), f"{name}.__all__ repeats a name"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names {missing}, which the module does not define"
    defined_here = {
        n
        for n, obj in vars(module).items()
        if not n.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == name
    }
    assert defined_here <= exported, f"{name}: public but not in __all__: {defined_here - exported}"


def _private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sublim_theory"):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return found


def test_tests_import_only_public_names():
    private = {str(p.relative_to(TESTS)): _private_imports(p) for p in TESTS.rglob("*.py")}
    assert {k: v for k, v in private.items() if v} == {}
