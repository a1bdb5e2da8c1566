"""The layers import one way (rig/__init__.py): moss_vla <- robot <- tasks <- rig. An import that points
back up (at module level or inside a function) fails here, naming the file and the line."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["moss_vla", "robot", "tasks", "rig"]  # each may import itself and the ones before it


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in a file, relative imports resolved to its own package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, path.relative_to(ROOT).parts[0] if node.level else
                          (node.module or "").split(".")[0]))
    return found


def forbidden_imports() -> list[str]:
    bad = []
    for i, layer in enumerate(LAYERS):
        above = set(LAYERS[i + 1:])
        for path in sorted((ROOT / layer).rglob("*.py")):
            bad += [f"{path.relative_to(ROOT)}:{line} imports {pkg} (a layer above {layer})"
                    for line, pkg in imported_packages(path) if pkg in above]
    return bad


def test_no_import_points_up():
    assert forbidden_imports() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    (tmp_path / "robot").mkdir()
    (tmp_path / "robot" / "x.py").write_text("def f():\n    from tasks.scoring import score_interactions\n")
    for layer in ("moss_vla", "tasks", "rig"):
        (tmp_path / layer).mkdir()
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert forbidden_imports() == ["robot/x.py:2 imports tasks (a layer above robot)"]
