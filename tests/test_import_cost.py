"""What importing statecraft costs, checked by what it imports (issue #9).

Every CLI command, worker start and embedding service pays ``import
statecraft``; ``statecraft status`` pays for the engine and the store. The
guarantees are checked in fresh interpreters, through ``sys.modules``, never
by timing (the figures are in bench/bench_startup.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import statecraft

# Heavy or optional packages: none of them is needed to import the package.
HEAVY = ("sqlalchemy", "sqlmodel", "pydantic", "pydantic_core", "transitions", "rfc8785", "anthropic", "rich",
         "click", "opentelemetry", "cryptography", "fastapi", "asyncio")

# What opening a database and reading a run must not pull in: the table
# models (SQLModel, SQLAlchemy's ORM), the LLM SDK, terminal rendering,
# tracing, the step loop and machine loading, and the parts of statecraft
# that only other commands use.
NOT_FOR_READING = ("sqlmodel", "sqlalchemy.orm", "anthropic", "rich", "opentelemetry", "cryptography", "fastapi",
                   "statecraft.store.tables", "statecraft.runner", "statecraft.execution", "statecraft.machine",
                   "statecraft.loader", "statecraft.agents", "statecraft.patterns", "statecraft.audit.verify",
                   "statecraft.audit.export", "statecraft.web", "statecraft.signing")


def _run(code: str, *args: str) -> str:
    """Run ``code`` in a fresh interpreter (no modules inherited from pytest); its stdout."""
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _loaded(modules: str) -> set[str]:
    return set(json.loads(modules))


def _hits(loaded: set[str], names: tuple[str, ...]) -> list[str]:
    """The names of ``names`` loaded, as a package or as any of its submodules."""
    return sorted({n for n in names for m in loaded if m == n or m.startswith(n + ".")})


def test_importing_statecraft_imports_no_heavy_package_and_no_submodule() -> None:
    loaded = _loaded(_run("import json, sys, statecraft; print(json.dumps(sorted(sys.modules)))"))
    assert _hits(loaded, HEAVY) == []
    assert sorted(m for m in loaded if m.startswith("statecraft.")) == []


def test_dir_lists_every_public_name_before_any_is_loaded() -> None:
    out = json.loads(_run(
        "import json, sys, statecraft\n"
        "names = [n for n in dir(statecraft) if not n.startswith('_')]\n"
        "print(json.dumps({'names': names, 'all': statecraft.__all__, 'modules': sorted(sys.modules)}))"
    ))
    assert sorted(out["names"]) == sorted(out["all"])
    assert _hits(set(out["modules"]), HEAVY) == []


def test_every_public_name_imports_from_the_package_in_a_fresh_interpreter() -> None:
    # One interpreter for all names; each `from statecraft import X` must give
    # the object its defining module holds (a wrong entry in the lazy table
    # raises ImportError here, or gives another object).
    code = (
        "import json, sys\n"
        "import statecraft\n"
        "bad = []\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        exec(f'from statecraft import {name} as imported', globals())\n"
        "    except ImportError as exc:\n"
        "        bad.append(f'{name}: {exc}')\n"
        "        continue\n"
        "    home = getattr(imported, '__module__', None)\n"
        "    if getattr(statecraft, name) is not imported:\n"
        "        bad.append(f'{name}: attribute and import differ')\n"
        "    elif getattr(imported, '__name__', None) == name and getattr(sys.modules[home], name) is not imported:\n"
        "        bad.append(f'{name}: not the object {home} defines')\n"
        "print(json.dumps(bad))"
    )
    assert json.loads(_run(code, json.dumps(statecraft.__all__))) == []


def test_public_names_are_the_defining_modules_objects() -> None:
    from statecraft import engine, lifecycle, store

    assert statecraft.Engine is engine.Engine
    assert statecraft.LEGAL_EDGES is lifecycle.LEGAL_EDGES
    assert statecraft.Database is store.db.Database


def test_an_unknown_name_is_an_attribute_error_and_an_import_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Engin'"):
        statecraft.Engin  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(ImportError, match="Engin"):
        exec("from statecraft import Engin")


def test_after_loading_everything_the_public_namespace_is_still_exactly_all() -> None:
    for name in statecraft.__all__:
        getattr(statecraft, name)
    submodules = {n for n in dir(statecraft) if isinstance(getattr(statecraft, n), ModuleType)}
    assert {"engine", "store"} <= submodules
    assert {n for n in dir(statecraft) if not n.startswith("_")} - submodules == set(statecraft.__all__)


@pytest.fixture(scope="module")
def run_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real database with one run at its approval gate, made by the CLI (another process)."""
    root = Path(__file__).resolve().parents[1]
    db = tmp_path_factory.mktemp("import-cost") / "runs.db"
    out = subprocess.run(
        [sys.executable, "-m", "statecraft", "start", str(root / "machines" / "contract_review.py"),
         "--input", str(root / "machines" / "samples" / "sample_msa.md"), "--db", str(db), "--json"],
        capture_output=True, text=True, check=True,
    )
    return db, json.loads(out.stdout)["run_id"]


def test_opening_a_database_and_reading_a_run_loads_no_table_models_sdk_or_renderer(run_db: tuple[Path, str]) -> None:
    db, run_id = run_db
    out = json.loads(_run(
        "import json, sys\n"
        "from statecraft.engine import Engine\n"
        "with Engine(sys.argv[1]) as engine:\n"
        "    run = engine.get(sys.argv[2])\n"
        "print(json.dumps({'status': run.status.value, 'modules': sorted(sys.modules)}))",
        str(db), run_id,
    ))
    assert out["status"] == "WAITING_FOR_APPROVAL"  # it really read the run
    assert _hits(set(out["modules"]), NOT_FOR_READING) == []


def test_creating_a_database_still_builds_the_schema_from_the_table_models(tmp_path: Path) -> None:
    # The table models are imported where the schema is created: a new file
    # gets every table, and a second process then opens it without them.
    db = tmp_path / "new.db"
    created = json.loads(_run(
        "import json, sqlite3, sys\n"
        "from statecraft import Database\n"
        "Database(sys.argv[1]).close()\n"
        "names = [r[0] for r in sqlite3.connect(sys.argv[1]).execute(\"SELECT name FROM sqlite_master WHERE type IN ('table', 'view')\")]\n"
        "print(json.dumps({'names': sorted(names), 'tables': 'statecraft.store.tables' in sys.modules}))",
        str(db),
    ))
    assert {"audit_event", "run", "blob", "statecraft_meta", "checkpoint"} <= set(created["names"])
    assert created["tables"] is True
    reopened = _loaded(_run(
        "import json, sys\nfrom statecraft import Database\nDatabase(sys.argv[1], create=False).close()\n"
        "print(json.dumps(sorted(sys.modules)))",
        str(db),
    ))
    assert _hits(reopened, ("sqlmodel", "statecraft.store.tables")) == []
