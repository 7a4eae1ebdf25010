"""The architecture the directory listing promises, enforced (issue #10, STYLE.md).

- The store owns all SQL: no SQL text in a string literal outside statecraft/store/.
- statecraft/audit/ never imports the engine (the step loop, the engine, the worker):
  reviewers' tools must not depend on how runs are advanced.
- The core never imports statecraft/patterns/ (patterns are built on the core, not in it);
  only the machine's escalation hook reaches the escalation rules, lazily.
- No module imports another module's private names (``from x import _y``).
- The step loop never imports the engine: it gets what it needs as an explicit
  ``Host`` (runner.py), and no module reaches into an engine's private attributes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "statecraft"
_SQL = re.compile(
    r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|VIEW|TRIGGER|INDEX|SCHEMA)|"
    r"DROP\s+(TABLE|TRIGGER)|ALTER\s+TABLE|PRAGMA\s+\w+|BEGIN\s+IMMEDIATE)\b",
    re.S,
)


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
            found.append((node.lineno, text + " x"))
    return found


def _docstrings(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                lines.add(body[0].value.lineno)
    return lines


def test_no_sql_outside_the_store() -> None:
    offenders = []
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "store":
            continue
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for line, text in _strings(tree):
            if line not in docs and _SQL.search(text):
                offenders.append(f"{rel}:{line}: {text[:70]!r}")
    assert not offenders, "SQL outside statecraft/store/:\n" + "\n".join(offenders)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(absolute module imported, names)`` for every import in ``path`` (relative ones resolved)."""
    tree = ast.parse(path.read_text())
    package = ".".join(("statecraft", *path.relative_to(PACKAGE).with_suffix("").parts))
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((module, [alias.name for alias in node.names]))
    return out


def test_the_audit_tools_never_import_the_engine() -> None:
    engine_side = ("statecraft.engine", "statecraft.runner", "statecraft.worker", "statecraft.aio",
                   "statecraft.execution", "statecraft.transition")
    offenders = [
        f"{p.relative_to(PACKAGE)} imports {module}"
        for p in (PACKAGE / "audit").glob("*.py")
        for module, _ in _imports(p)
        if module.startswith(engine_side)
    ]
    assert not offenders, offenders


def test_the_core_never_imports_the_patterns() -> None:
    core = [p for p in _modules() if p.relative_to(PACKAGE).parts[0] not in ("patterns", "web", "cli")
            and p.name not in ("__init__.py",)]
    offenders = []
    for p in core:
        tree = ast.parse(p.read_text())
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and "patterns" in node.module.split("."):
                # The machine judges escalation rules through one lazy, function-local import.
                if id(node) in top_level or p.name != "machine.py":
                    offenders.append(f"{p.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders, offenders


def test_the_step_loop_never_imports_the_engine() -> None:
    loop = ("runner.py", "execution.py", "transition.py", "leases.py", "budget.py")
    offenders = [
        f"{name} imports {module}"
        for name in loop
        for module, names in _imports(PACKAGE / name)
        if module == "statecraft.engine" or (module == "statecraft" and "engine" in names)
    ]
    assert not offenders, offenders


def test_no_module_reaches_into_an_engines_private_attributes() -> None:
    offenders = []
    for p in _modules():
        if p.name == "engine.py":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                continue
            owner = node.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if name in ("engine", "_engine"):
                offenders.append(f"{p.relative_to(PACKAGE)}:{node.lineno}: {name}.{node.attr}")
    assert not offenders, "\n".join(offenders)


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for p in _modules():
        for module, names in _imports(p):
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    offenders.append(f"{p.relative_to(PACKAGE)}: from {module} import {name}")
    assert not offenders, "\n".join(offenders)
