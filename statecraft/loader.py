"""Loading a machine from a reference: ``path/to/file.py[:attr]`` or ``package.module:attr``.

Without ``:attr`` the module's ``machine`` attribute is used, or its only
``Machine`` instance. Every failure becomes one ``MachineLoadError`` line.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from .errors import MachineLoadError, StatecraftError
from .machine import Machine

__all__ = ["canonical_ref", "load_machine", "load_sibling"]


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
    path (cached in ``sys.modules`` under a name derived from the path, so two
    machines sharing a helper share one module and its classes).

    Raises:
        ImportError: no such file, or it cannot be loaded.
    """
    path = Path(anchor).resolve().with_name(f"{name}.py")
    key = f"statecraft_machine_helper_{name}_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    if key not in sys.modules:
        if not path.is_file():
            raise ImportError(f"cannot load {path}: no such file")
        _exec_path(path, key)
    return sys.modules[key]


def _exec_path(path: Path, name: str) -> ModuleType:
    """Execute the Python file ``path`` as module ``name`` (registered in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    # Registered before exec: pydantic and dataclasses look the module up by name.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
