"""The code a machine runs: which source files it consists of, and one digest over them.

Why: a machine's declarations (``Machine.describe()``) say which steps
exist and what they may write, not what their agents *do*. An approver
who approved "pay 1?" must not see the run finish with an agent edited to
pay 999 (issue #8). So a machine's identity covers its code too:
``Machine.code_digest`` is a SHA-256 over the contents of

- the file that built the machine (the first caller of ``Machine(...)``
  outside the statecraft package),
- the modules it loaded from its own folder: siblings loaded with
  :func:`statecraft.loader.load_sibling` (transitively), and modules,
  functions and classes its globals hold from files in its folder,
- the files that define its state model, its ``initial`` factory, its
  steps' agents and escalation rules (functions found through closures,
  ``functools.partial``, ``__wrapped__`` and the attributes of agent
  objects, a few levels deep),

excluding the standard library, installed packages (site-packages) and
statecraft itself: those are versioned by their distributions.

The digest is over the files' **contents** (sorted SHA-256s), not their
paths, so the same code deployed under another directory keeps its digest.
Files that :mod:`statecraft.loader` executed are hashed as the exact bytes
executed (recorded here before execution), not re-read from disk: a file
edited after it was loaded is not the code that runs. Other files are read
when the machine is built.

What is not covered: code reached otherwise (an ordinary import of a
module outside the machine's folder that defines no agent, data files,
environment variables, a model behind an API). Keep such code in the
machine's folder, or version it with the machine's ``version``.
"""

from __future__ import annotations

import functools
import hashlib
import site
import sys
import sysconfig
import threading
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import rfc8785

__all__ = [
    "SourceFile",
    "code_digest",
    "code_files",
    "record_executed",
    "record_sibling",
]

_DEPTH: Final = 4
_lock = threading.Lock()
_executed: dict[str, str] = {}  # resolved path -> SHA-256 of the bytes last executed from it
_siblings: dict[str, set[str]] = {}  # resolved anchor path -> sibling paths it loaded


@dataclass(frozen=True, order=True)
class SourceFile:
    """One source file of a machine's code.

    Attributes:
        path: the resolved path (recorded for reviewers; not hashed into the digest).
        sha256: SHA-256 of its content, 64 hex.
    """

    path: str
    sha256: str


def record_executed(path: Path, sha256: str) -> None:
    """Remember that ``path`` is about to be executed with content of hash ``sha256``. Thread-safe."""
    with _lock:
        _executed[str(path)] = sha256


def record_sibling(anchor: Path, sibling: Path) -> None:
    """Remember that the file ``anchor`` loaded ``sibling`` from its folder. Thread-safe."""
    with _lock:
        _siblings.setdefault(str(anchor), set()).add(str(sibling))


def code_files(
    module_file: str | None,
    module_globals: Mapping[str, Any] | None,
    objects: Iterable[object],
) -> tuple[SourceFile, ...]:
    """The source files of a machine's code (module docstring), sorted by path.

    Reads the files not executed by the loader. Files that cannot be read
    are left out (e.g. a function defined in ``<stdin>``).

    Args:
        module_file: the file that built the machine, if any.
        module_globals: that module's globals at the time (for the modules
            it holds from its folder).
        objects: the state model, ``initial``, agents and rules to search.
    """
    paths: set[str] = set()
    if module_file:
        anchor = _resolved(module_file)
        if anchor is not None:
            paths.add(anchor)
            folder = Path(anchor).parent
            for value in (module_globals or {}).values():
                found = _defining_file(value)
                if found is not None and Path(found).is_relative_to(folder):
                    paths.add(found)
    seen: set[int] = set()
    for obj in objects:
        _walk(obj, _DEPTH, paths, seen)
    paths = {p for p in paths if not _excluded(p)}
    paths |= _sibling_closure(paths)
    files = []
    for path in sorted(paths):
        digest = _digest_of(path)
        if digest is not None:
            files.append(SourceFile(path, digest))
    return tuple(files)


def code_digest(files: Iterable[SourceFile]) -> str:
    """SHA-256 over the sorted, distinct content hashes of ``files`` (paths excluded). Pure."""
    hashes = sorted({f.sha256 for f in files})
    return hashlib.sha256(b"statecraft.code.v1\x00" + rfc8785.dumps(hashes)).hexdigest()


def _sibling_closure(paths: set[str]) -> set[str]:
    with _lock:
        graph = {k: set(v) for k, v in _siblings.items()}
    found: set[str] = set()
    todo = list(paths)
    while todo:
        for sibling in graph.get(todo.pop(), ()):
            if sibling not in found and sibling not in paths:
                found.add(sibling)
                todo.append(sibling)
    return found


def _digest_of(path: str) -> str | None:
    with _lock:
        executed = _executed.get(path)
    if executed is not None:
        return executed
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _walk(obj: object, depth: int, paths: set[str], seen: set[int]) -> None:
    """Collect the files defining ``obj`` and the callables it holds, ``depth`` levels deep."""
    if depth <= 0 or id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        return
    seen.add(id(obj))
    found = _defining_file(obj)
    if found is not None:
        paths.add(found)
    if isinstance(obj, type):
        return  # a class is its file; its attributes are in it
    children: list[object] = []
    if isinstance(obj, types.FunctionType):
        children.extend(cell.cell_contents for cell in obj.__closure__ or () if _filled(cell))
        children.append(getattr(obj, "__wrapped__", None))
    elif isinstance(obj, types.MethodType):
        children.extend((obj.__func__, obj.__self__))
    elif isinstance(obj, functools.partial):
        children.extend((obj.func, *obj.args, *obj.keywords.values()))
    elif isinstance(obj, Mapping):
        children.extend(obj.values())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children.extend(obj)
    else:
        children.extend(getattr(obj, "__dict__", {}).values())
        for slot in getattr(type(obj), "__slots__", ()):
            children.append(getattr(obj, slot, None))
    for child in children:
        _walk(child, depth - 1, paths, seen)


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises ValueError
    except ValueError:
        return False
    return True


def _defining_file(obj: object) -> str | None:
    """The resolved source file defining ``obj`` (a function, class, module or instance)."""
    filename: str | None = None
    if isinstance(obj, types.ModuleType):
        filename = getattr(obj, "__file__", None)
    elif isinstance(obj, types.FunctionType):
        filename = obj.__code__.co_filename
    else:
        cls = obj if isinstance(obj, type) else type(obj)
        module = sys.modules.get(getattr(cls, "__module__", "") or "")
        filename = getattr(module, "__file__", None)
    if not filename or not filename.endswith(".py"):
        return None
    return _resolved(filename)


def _resolved(filename: str) -> str | None:
    path = Path(filename)
    try:
        return str(path.resolve()) if path.is_file() else None
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def _excluded_roots() -> tuple[Path, ...]:
    roots = {Path(__file__).resolve().parent}
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if key in paths:
            roots.add(Path(paths[key]).resolve())
    for extra in (*getattr(site, "getsitepackages", lambda: [])(), site.getusersitepackages()):
        roots.add(Path(extra).resolve())
    return tuple(roots)


def _excluded(path: str) -> bool:
    candidate = Path(path)
    return any(candidate.is_relative_to(root) for root in _excluded_roots())
