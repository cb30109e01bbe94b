"""Rules of the code base that ruff and import-linter do not check."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "mechscope"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_private_name_is_imported_across_modules():
    """A name with a leading underscore belongs to its module: importing it from another one means the split
    between the two left a private seam (make the name public, or move the code that needs it)."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        here = _module(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("mechscope"):
                for alias in node.names:
                    name = alias.name
                    if name.startswith("_") and not name.startswith("__") and node.module != here:
                        found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} imports {node.module}.{name}")
    assert not found, "private names imported across modules:\n" + "\n".join(found)
