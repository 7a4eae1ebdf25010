"""statecraft without the optional ``claude`` extra: everything works but Claude steps,
which fail when the machine is built, with one line naming the extra.

Each test runs a real subprocess whose import system refuses ``anthropic``
(a ``sys.meta_path`` finder installed by ``sitecustomize``), which is what an
environment without the extra looks like to statecraft.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_BLOCKER = '''
import sys
class _NoAnthropic:
    def find_spec(self, name, path=None, target=None):
        if name == "anthropic" or name.startswith("anthropic."):
            raise ModuleNotFoundError("No module named 'anthropic'", name="anthropic")
        return None
sys.meta_path.insert(0, _NoAnthropic())
'''

_CLAUDE_MACHINE = '''
from pydantic import BaseModel
from statecraft import ClaudeAgent, Finish, Machine, Step

class S(BaseModel):
    text: str = ""

class Verdict(BaseModel):
    ok: bool

agent = ClaudeAgent(
    agent_name="judge", prompt_version="p1", model="claude-sonnet-4-5", system="Judge.",
    prompt="$task", output=Verdict, decide=lambda view, out, ctx: Finish(),
)
machine = Machine("claude_only", "1", S, steps=[Step("judge", agent, may_finish=True)])
'''


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "sitecustomize.py").write_text(_BLOCKER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    env.pop("ANTHROPIC_API_KEY", None)
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


def test_import_statecraft_and_the_cli_work_without_anthropic(tmp_path: Path) -> None:
    probe = _run(tmp_path, "-c", "import anthropic")
    assert probe.returncode != 0, "the blocker must make anthropic unimportable"

    imported = _run(tmp_path, "-c", "import statecraft, sys; print('anthropic' in sys.modules)")
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "False"

    started = _run(
        tmp_path, "-m", "statecraft", "start", "--db", str(tmp_path / "s.db"),
        str(REPO / "machines" / "contract_review.py"),
        "--input", str(REPO / "machines" / "samples" / "sample_msa.md"),
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip().endswith("WAITING_FOR_APPROVAL")
    verified = _run(tmp_path, "-m", "statecraft", "audit", "verify", "--db", str(tmp_path / "s.db"))
    assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stderr


def test_a_claude_step_without_the_extra_fails_when_the_machine_is_built_naming_the_extra(
    tmp_path: Path,
) -> None:
    (tmp_path / "claude_machine.py").write_text(_CLAUDE_MACHINE)
    result = _run(
        tmp_path, "-m", "statecraft", "graph", "claude_machine.py"
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'statecraft[claude]'" in lines[0]
    assert "Traceback" not in result.stderr
