"""An approval binds the code that will run (issue #8).

The reproduction: a run's gate asks "pay 1?"; someone edits the agent to
pay 999; the approval lets the run finish DONE having paid 999, because the
machine digest covered declarations only. Now ``Machine.digest`` covers the
machine's code as well (statecraft/sources.py), and continuing a run on
other code — approve, retry, resume, a worker, start of a created run — is
refused with ``MachineMismatch`` before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from statecraft import Engine, Machine, MachineMismatch, RunStatus, Worker, load_machine
from statecraft.machine import machine_digest
from statecraft.sources import code_digest

PAY = '''
from pydantic import BaseModel

from statecraft import Finish, Machine, RequestApproval, Step
from statecraft.loader import load_sibling

limits = load_sibling(__file__, "limits")


class Payment(BaseModel):
    paid: int = 0


def ask(state, ctx):
    return RequestApproval("pay 1?", resume_at="pay")


def pay(state, ctx):
    return Finish(update={"paid": limits.AMOUNT})


machine = Machine("pay", "1", Payment, steps=[
    Step("ask", ask, next=["pay"]),
    Step("pay", pay, may_finish=True, writes=["paid"]),
])
'''


@pytest.fixture
def pay_file(tmp_path: Path) -> Path:
    """A machine file paying ``limits.AMOUNT`` (1) after its gate, with a sibling module."""
    folder = tmp_path / "machines"
    folder.mkdir()
    (folder / "limits.py").write_text("AMOUNT = 1\n")
    path = folder / "pay.py"
    path.write_text(PAY)
    return path


def _events(db: Path) -> list[Any]:
    with Engine(db) as engine:
        return engine.events()


def test_approving_after_the_agent_was_edited_to_pay_more_is_refused_and_writes_nothing(
    db_path: Path, pay_file: Path
) -> None:
    with Engine(db_path) as first:
        run = first.start(load_machine(str(pay_file)), {}, ref=str(pay_file))
    assert run.status is RunStatus.WAITING_FOR_APPROVAL and run.pending is not None
    pay_file.write_text(PAY.replace('{"paid": limits.AMOUNT}', '{"paid": 999}'))
    before = _events(db_path)
    with Engine(db_path) as second, pytest.raises(MachineMismatch) as info:  # another process
        second.approve(run.run_id, by="alice@example.com", digest=run.pending.proposal_digest)
    assert info.value.changed == "code"  # the declarations are the same
    assert info.value.files == (str(pay_file.resolve()),)
    assert "\n" not in str(info.value) and "the code changed" in str(info.value)
    assert _events(db_path) == before  # checked before approval.granted was written
    pay_file.write_text(PAY)  # the code the approver saw: the run continues
    with Engine(db_path) as third:
        done = third.approve(run.run_id, by="alice@example.com", digest=run.pending.proposal_digest)
    assert (done.status, done.state["paid"]) == (RunStatus.DONE, 1)


def test_the_cli_refuses_to_approve_a_run_whose_code_changed_in_one_line(cli: Any, pay_file: Path) -> None:
    run = cli.json("start", str(pay_file))
    pay_file.write_text(PAY.replace('{"paid": limits.AMOUNT}', '{"paid": 999}'))
    before = _events(cli.db)
    result = cli("approve", run["run_id"], "--by", "alice@example.com", "--digest", run["pending"]["proposal_digest"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: run ")
    assert "the code changed" in result.stderr and "pay.py" in result.stderr
    assert _events(cli.db) == before


def test_editing_a_sibling_module_is_a_code_change_too(db_path: Path, pay_file: Path) -> None:
    with Engine(db_path) as first:
        run = first.start(load_machine(str(pay_file)), {}, ref=str(pay_file))
        first.reject(run.run_id, by="bob@example.com", reason="not now")
    limits = pay_file.parent / "limits.py"
    limits.write_text("AMOUNT = 999\n")
    before = _events(db_path)
    # Another process loads the edited sibling: refused, nothing written.
    result = subprocess.run(
        [sys.executable, "-m", "statecraft", "retry", run.run_id, "--by", "ops@example.com", "--db", str(db_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "the code changed" in result.stderr and str(limits.resolve()) in result.stderr
    assert _events(db_path) == before
    # This process loaded the sibling before the edit and still runs that
    # code (siblings load once per process), so its digest still matches.
    with Engine(db_path) as same_process:
        again = same_process.retry(run.run_id, by="ops@example.com")
        assert again.pending is not None
        done = same_process.approve(run.run_id, by="alice@example.com", digest=again.pending.proposal_digest)
    assert done.state["paid"] == 1


def test_a_worker_and_resume_refuse_a_run_whose_code_changed(db_path: Path, pay_file: Path) -> None:
    with Engine(db_path) as first:
        run = first.start(load_machine(str(pay_file)), {}, ref=str(pay_file))
        first.approve(run.run_id, by="alice@example.com", advance=False)  # a worker continues it
    pay_file.write_text(PAY.replace('{"paid": limits.AMOUNT}', '{"paid": 999}'))
    before = _events(db_path)
    with Engine(db_path) as worker_engine:
        stats = Worker(worker_engine).run(until_idle=True)
        assert (stats.advanced, stats.errors) == (0, 1)
        with pytest.raises(MachineMismatch):
            worker_engine.resume(run.run_id)
        assert worker_engine.get(run.run_id).status is RunStatus.RUNNING
    assert _events(db_path) == before


def test_start_of_a_created_run_refuses_changed_code(db_path: Path, pay_file: Path) -> None:
    with Engine(db_path) as first:
        run = first.create(load_machine(str(pay_file)), {}, ref=str(pay_file))
    pay_file.write_text(PAY + "\n# a comment is code too: the file's bytes are hashed\n")
    before = _events(db_path)
    with Engine(db_path) as second, pytest.raises(MachineMismatch):
        second.start_created(run.run_id)
    assert _events(db_path) == before


def test_run_created_records_both_digest_parts_and_the_code_files(db_path: Path, pay_file: Path) -> None:
    machine = load_machine(str(pay_file))
    with Engine(db_path) as engine:
        run = engine.start(machine, {}, ref=str(pay_file))
        created = engine.events(run.run_id)[0]
    recorded = json.loads(created.payload_json or "{}")["machine"]
    assert recorded["definition_digest"] == machine.definition_digest
    assert recorded["code_digest"] == machine.code_digest
    assert sorted(f["path"] for f in recorded["code_files"]) == sorted(
        str(p.resolve()) for p in (pay_file, pay_file.parent / "limits.py")
    )
    assert created.machine_digest == run.machine_digest == machine.digest
    assert machine.digest == machine_digest(machine.definition_digest, machine.code_digest)


def test_the_code_digest_is_over_contents_so_a_moved_deployment_keeps_it(tmp_path: Path, pay_file: Path) -> None:
    moved = tmp_path / "release-2" / "machines"
    moved.mkdir(parents=True)
    for name in ("pay.py", "limits.py"):
        (moved / name).write_text((pay_file.parent / name).read_text())
    here, there = load_machine(str(pay_file)), load_machine(str(moved / "pay.py"))
    assert here.code_digest == there.code_digest and here.digest == there.digest
    assert code_digest(here.code_files) == here.code_digest


def test_the_digest_is_of_the_bytes_executed_not_of_a_later_edit(pay_file: Path) -> None:
    executed = hashlib.sha256(pay_file.read_bytes()).hexdigest()
    loaded = load_machine(str(pay_file))
    pay_file.write_text(PAY.replace('{"paid": limits.AMOUNT}', '{"paid": 999}'))
    # A machine built now from the loaded agents names the code that runs
    # (the bytes executed), not the file as it is on disk now.
    again = Machine(loaded.name, loaded.version, loaded.state_model, list(loaded.steps.values()))
    by_path = {f.path: f.sha256 for f in again.code_files}
    assert by_path[str(pay_file.resolve())] == executed
    assert load_machine(str(pay_file)).code_digest != loaded.code_digest


def test_statecraft_and_installed_packages_are_not_part_of_a_machines_code(pay_file: Path) -> None:
    import pydantic

    import statecraft

    paths = [f.path for f in load_machine(str(pay_file)).code_files]
    assert paths == sorted(str(p.resolve()) for p in (pay_file.parent / "limits.py", pay_file))
    assert not any(p.startswith(str(Path(statecraft.__file__).parent)) for p in paths)
    assert not any(p.startswith(str(Path(pydantic.__file__).parent)) for p in paths)


def test_a_run_recorded_before_code_digests_continues_on_its_definition(db_path: Path, pay_file: Path) -> None:
    machine = load_machine(str(pay_file))
    with Engine(db_path) as engine:
        run = engine.start(machine, {}, ref=str(pay_file))
        with engine.db.write() as conn:  # as a database written by an older statecraft holds it
            conn.exec_driver_sql(
                "UPDATE run SET machine_digest = ? WHERE run_id = ?", (machine.definition_digest, run.run_id)
            )
    with Engine(db_path) as later:
        assert later.approve(run.run_id, by="alice@example.com").status is RunStatus.DONE
