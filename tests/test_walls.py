"""The architecture's walls, read from the source: who may import whom.

- the library (engine, models, testing, harness, symbolic, errors) never imports a testbed, a
  study or the command line; the engine imports only models, errors and itself; a testbed
  (the substrates studies share) imports the library and other testbeds, never a study;
- a command (``cli/<name>.py``) never imports another command (only ``cli.main``'s flag types);
- no module imports another module's private (``_name``) names.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sublim_theory"
LIBRARY = ("engine", "models", "testing", "harness", "symbolic", "testbeds")
ALLOWED = {
    "engine": ("engine", "models", "errors"),
    "models": ("models", "errors", "harness"),
    "testing": ("testing", "engine", "models", "errors"),
    "harness": ("harness", "errors"),
    "symbolic": ("symbolic", "errors", "harness"),
    "testbeds": ("testbeds", "engine", "models", "harness", "errors"),
}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every ``sublim_theory`` import in ``path``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sublim_theory"):
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("sublim_theory")]
    return found


def _modules(part: str) -> list[Path]:
    return sorted((PACKAGE / part).rglob("*.py"))


def _wall_breaches(part: str) -> list[str]:
    breaches = []
    for path in _modules(part):
        for module, names in _imports(path):
            targets = (
                [module] if module != "sublim_theory" else [f"sublim_theory.{n}" for n in names]
            )
            for target in targets:
                top = target.split(".")[1] if "." in target else ""
                if top and top not in ALLOWED[part]:
                    breaches.append(f"{path.relative_to(PACKAGE)} imports {target}")
    return breaches


@pytest.mark.parametrize("part", LIBRARY)
def test_library_never_imports_testbeds_studies_or_cli(part):
    assert _wall_breaches(part) == []


def test_the_wall_test_can_fail(tmp_path, monkeypatch):
    fake = tmp_path / "sublim_theory"
    (fake / "engine").mkdir(parents=True)
    (fake / "engine" / "x.py").write_text("from sublim_theory.studies.screen import report\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert _wall_breaches("engine") == ["engine/x.py imports sublim_theory.studies.screen"]


def test_commands_never_import_each_other():
    breaches = []
    for path in _modules("cli"):
        for module, _ in _imports(path):
            parts = module.split(".")
            if parts[:2] == ["sublim_theory", "cli"] and len(parts) > 2 and parts[2] != "main":
                if path.stem != "main":
                    breaches.append(f"{path.name} imports {module}")
    assert breaches == []


def test_no_module_imports_another_modules_private_names():
    breaches = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for module, names in _imports(path):
            breaches += [
                f"{path.relative_to(PACKAGE)}: {module}.{n}" for n in names if n.startswith("_")
            ]
    assert breaches == []
