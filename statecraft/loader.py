"""Loading a machine from a reference: ``path/to/file.py[:attr]`` or ``package.module:attr``.

Without ``:attr`` the module's ``machine`` attribute is used, or its only
``Machine`` instance. Every failure becomes one ``MachineLoadError`` line.

Loading by path is serialised by one process-wide re-entrant lock. A
worker advances several runs on threads, and each may load a machine file
cold; without the lock, one thread could find a sibling module that
another thread had registered but not yet finished executing (pydantic
needs the module in ``sys.modules`` while its classes are built), and fail
with ``… has no attribute 'Clause'`` (issue #8). Under the lock a sibling
module is handed out only once fully executed; a failed execution leaves
nothing registered. Machine files execute the exact bytes whose SHA-256
:mod:`statecraft.sources` records for the machine's code digest.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType

from . import sources
from .errors import MachineLoadError, StatecraftError
from .machine import Machine

__all__ = ["canonical_ref", "load_machine", "load_sibling"]

_lock = threading.RLock()  # re-entrant: a machine file loads its siblings while executing
_siblings: dict[str, ModuleType] = {}  # fully executed sibling modules, by their key


def _split(ref: str) -> tuple[str, str | None]:
    # A Windows drive letter ("C:\\x.py") is not an attribute separator.
    head, sep, attr = ref.rpartition(":")
    if sep and attr and "/" not in attr and "\\" not in attr and len(head) > 1:
        return head, attr
    return ref, None


def canonical_ref(ref: str) -> str:
    """The reference with a file path made absolute, so another working directory can load it."""
    target, attr = _split(ref)
    if target.endswith(".py") or "/" in target or "\\" in target:
        target = str(Path(target).expanduser().resolve())
    return f"{target}:{attr}" if attr else target


def load_machine(ref: str) -> Machine:  # type: ignore[type-arg]
    """Import the machine that ``ref`` names.

    Raises:
        MachineLoadError: the file or module does not exist, fails to import
            (syntax error, exception, invalid machine definition), or has no
            such attribute, or the attribute is not a ``Machine``.
    """
    target, attr = _split(ref)
    is_path = target.endswith(".py") or "/" in target or "\\" in target
    try:
        if is_path:
            path = Path(target).expanduser().resolve()
            if not path.is_file():
                raise MachineLoadError(ref, f"no such file {path}")
            # A fresh import each time: a machine file may have changed on disk.
            name = "statecraft_machine_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
            with _lock:
                module = _exec_path(path, name)
        else:
            module = importlib.import_module(target)
    except MachineLoadError:
        raise
    except StatecraftError as exc:
        raise MachineLoadError(ref, str(exc)) from exc
    except SyntaxError as exc:
        raise MachineLoadError(ref, f"syntax error at line {exc.lineno}: {exc.msg}") from exc
    except ModuleNotFoundError as exc:
        raise MachineLoadError(ref, f"no module named {exc.name!r}") from exc
    except Exception as exc:
        raise MachineLoadError(ref, f"{type(exc).__name__} while importing: {exc}") from exc
    if attr is not None:
        if not hasattr(module, attr):
            raise MachineLoadError(ref, f"module has no attribute {attr!r}")
        found = getattr(module, attr)
    elif isinstance(getattr(module, "machine", None), Machine):
        found = module.machine
    else:
        candidates = [v for v in vars(module).values() if isinstance(v, Machine)]
        if len(candidates) != 1:
            raise MachineLoadError(
                ref,
                "no Machine found; name it `machine` or give :attr"
                if not candidates
                else f"{len(candidates)} Machines found; give :attr",
            )
        found = candidates[0]
    if not isinstance(found, Machine):
        raise MachineLoadError(ref, f"{attr!r} is a {type(found).__name__}, not a Machine")
    return found


def load_sibling(anchor: str, name: str) -> ModuleType:
    """Import module ``name`` from the folder of file ``anchor`` (pass ``__file__``).

    Machine files are loaded by path, not as a package, so a relative import
    cannot reach a helper module beside them; this loads it by path, once per
    path (cached under a name derived from the path, so two machines sharing
    a helper share one module and its classes). Thread-safe: the module is
    executed under the loader's lock and handed out only once fully
    executed. The sibling's source is part of the loading machine's code
    digest (statecraft/sources.py).

    Raises:
        ImportError: no such file, or it cannot be loaded.
    """
    anchor_path = Path(anchor).resolve()
    path = anchor_path.with_name(f"{name}.py")
    key = f"statecraft_machine_helper_{name}_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    with _lock:
        module = _siblings.get(key)
        if module is None and key in sys.modules:
            # Being executed further up this thread's stack (siblings that
            # load each other): like Python's import, hand out the partial module.
            module = sys.modules[key]
        if module is None:
            if not path.is_file():
                raise ImportError(f"cannot load {path}: no such file")
            module = _exec_path(path, key)
            _siblings[key] = module
        sources.record_sibling(anchor_path, path)
    return module


def _exec_path(path: Path, name: str) -> ModuleType:
    """Execute the Python file ``path`` as module ``name`` (registered in ``sys.modules``).

    The caller holds the loader's lock. The bytes executed are the bytes
    hashed for the code digest, so an edit racing the load cannot slip in.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python file")
    source = path.read_bytes()
    code = compile(source, str(path), "exec", dont_inherit=True)
    module = importlib.util.module_from_spec(spec)
    sources.record_executed(path, hashlib.sha256(source).hexdigest())
    # Registered before exec: pydantic and dataclasses look the module up by name.
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
