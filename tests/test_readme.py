"""The README's set-up commands are the ones CI runs, and its embedding example works."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.+?)\n```", setup)


def test_the_readme_gives_exactly_two_setup_commands() -> None:
    commands = _commands()
    assert len(commands) == 2
    assert "statecraft start" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert _commands()[1] in ci


def test_the_embedding_example_runs(tmp_path: Path, monkeypatch: object) -> None:
    text = (REPO / "README.md").read_text()
    code = text.split("## Embedding", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)  # type: ignore[attr-defined]
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "statecraft.db").exists()


def test_the_lifecycle_diagram_in_the_docs_is_rendered_from_the_code() -> None:
    from statecraft.lifecycle import lifecycle_mermaid

    doc = (REPO / "docs" / "concepts.md").read_text()
    block = doc.split("```mermaid\n", 1)[1].split("\n```", 1)[0]
    assert block == lifecycle_mermaid().rstrip("\n"), "regenerate with: statecraft graph --lifecycle"


def _pinned() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / "lock.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^ ;#]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_both_setup_commands_install_against_the_tested_lock() -> None:
    for command in _commands():
        assert command.startswith("pip install -c requirements/lock.txt -e "), command


def test_the_lock_pins_every_dependency_and_extra_the_project_declares() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += [d for d in extra if not d.startswith("statecraft")]
    pins = _pinned()
    missing = []
    for requirement in declared:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")  # type: ignore[union-attr]
        if name not in pins:
            missing.append(name)
    assert not missing, f"not pinned in requirements/lock.txt (run: bash .ci/lock): {missing}"


def test_the_installed_versions_are_the_locked_ones() -> None:
    # CI installs with -c requirements/lock.txt: what runs the tests is what was locked.
    from importlib.metadata import PackageNotFoundError, version

    pins = _pinned()
    for name in ("anthropic", "sqlalchemy", "sqlmodel", "pydantic", "transitions", "click", "rich", "hypothesis"):
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue
        assert installed == pins[name], f"{name} {installed} installed, {pins[name]} locked"
