"""MkDocs hooks: pages built from the repository at build time, and math rendered offline.

- ``theory/*.md`` and ``theory/generated/*.{md,tex}`` are served from where they live in the
  repository (included, not copied), at the same relative paths, so their links keep working.
- The figures of the committed studies (``experiments/results/**/*.png``) are served under
  ``results/``, so a study page shows the figure its command wrote.
- ``cli.md`` is generated from the argparse parser (``docs/gen_cli.py``).
- ``api/<package>.md`` lists every public module of that subpackage (names without a leading
  underscore), so a module added or renamed in the package shows up without editing the docs.
- Math (``$...$``, ``$$...$$``, kept verbatim by ``pymdownx.arithmatex``) is converted to MathML
  with ``latex2mathml`` when the page is built: no script, font or CDN is fetched by the reader.
"""

from __future__ import annotations

import html
import importlib
import pkgutil
import re
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "docs"):  # the package and gen_cli.py, importable from a fresh clone
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from gen_cli import cli_markdown  # noqa: E402

# API pages: subpackage -> title. The top-level surface (sublim_theory/__init__.py) is api/index.md.
API_PACKAGES = {
    "engine": "Engine",
    "models": "Models",
    "testing": "Testing",
    "harness": "Harness",
    "symbolic": "Symbolic derivations",
}
API_INTRO = {
    "engine": "The measurements: functional models, losses with their output curvature, the "
    "alignment kernels and report, update rules, LoRA, placements, trajectories, the screen.",
    "models": "Architectures the studies and tests build (the zoo, GPT-2 from a config).",
    "testing": "Oracles, assertions and hypothesis strategies for checking the theorem on your "
    "own models.",
    "harness": "The run layer every study uses: configs, output folders, atomic writes, records, "
    "the unit store and the study loop.",
    "symbolic": "The sympy derivations behind `theory/generated/`: every step checked when the "
    "document is built.",
}


def _public_modules(package: str) -> list[str]:
    module = importlib.import_module(f"sublim_theory.{package}")
    names = [
        info.name
        for info in pkgutil.iter_modules(module.__path__)
        if not info.name.startswith("_") and not info.ispkg
    ]
    return sorted(names)


def _api_page(package: str) -> str:
    lines = [f"# {API_PACKAGES[package]}: `sublim_theory.{package}`", "", API_INTRO[package], ""]
    for name in _public_modules(package):
        lines += [f"::: sublim_theory.{package}.{name}", ""]
    return "\n".join(lines)


def on_files(files: Files, config) -> Files:
    """Add the theory pages, the study figures, the CLI page and the API pages to the build."""
    for path in sorted((ROOT / "theory").rglob("*")):
        if path.suffix in (".md", ".tex") and path.is_file():
            uri = path.relative_to(ROOT).as_posix()
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    results = ROOT / "experiments" / "results"
    for path in sorted(results.rglob("*.png")):
        uri = "results/" + path.relative_to(results).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    files.append(File.generated(config, "cli.md", content=cli_markdown()))
    for package in API_PACKAGES:
        files.append(File.generated(config, f"api/{package}.md", content=_api_page(package)))
    return files


_MATH = re.compile(
    r'<(span|div) class="arithmatex">\s*(?:\\\(|\\\[)(.*?)(?:\\\)|\\\])\s*</\1>', re.DOTALL
)
# latex2mathml does not know the sized delimiters in front of angle brackets.
_SIZED = re.compile(r"\\(?:big|Big|bigg|Bigg)[lr]?(?=\\[lr]angle)")


def _mathml(match: re.Match) -> str:
    from latex2mathml.converter import convert

    tex = _SIZED.sub("", html.unescape(match.group(2)).strip())
    display = "block" if match.group(1) == "div" else "inline"
    try:
        return convert(tex, display=display)
    except Exception:  # an unsupported macro: show the TeX source rather than fail the build
        return f"<code>{html.escape(tex)}</code>"


def on_page_content(content: str, page, config, files) -> str:
    """Replace the arithmatex placeholders with MathML."""
    return _MATH.sub(_mathml, content)
