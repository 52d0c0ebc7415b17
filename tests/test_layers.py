"""The data path's stages (asr/, llm/, tts/, kernels/) never import the app that wires them, nor the
benchmarks that measure them: each stage can be used and tested on its own."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("asr", "llm", "tts", "kernels")
ABOVE = {"app", "bench"}


def imported_packages(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_stages_never_import_the_app_or_the_benchmarks() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & ABOVE)
        for stage in STAGES
        for path in sorted((ROOT / stage).rglob("*.py"))
        if imported_packages(path) & ABOVE
    }
    assert offenders == {}
    assert len(list((ROOT / "llm").rglob("*.py"))) > 10  # the scan saw the real tree


def test_the_product_does_not_import_the_benchmarks_at_module_level() -> None:
    """`specvoice bench` loads them on demand; nothing else in app/ depends on them."""
    offenders = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:  # module level only: the bench command imports lazily
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bench":
                offenders.append(str(path.relative_to(ROOT)))
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "bench" for a in node.names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
