"""Machine definitions: validation at build time, digest, views, judging outcomes."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from statecraft import Fail, Finish, Goto, Machine, MachineDefinitionError, RequestApproval, Step
from statecraft.machine import AppliedOutcome, IllegalOutcome


class S(BaseModel):
    a: int = 0
    b: str = ""


def noop(state: object, ctx: object) -> Finish:
    return Finish()


def _machine(**overrides: object) -> Machine[S]:
    steps = overrides.pop("steps", None) or [
        Step("one", noop, next=["two"], writes=["a"]),
        Step("two", noop, may_finish=True, reads=["a"], writes=["b"]),
    ]
    return Machine("m", "1", S, steps, **overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([Step("one", noop, next=["ghost"], may_finish=True)], "next step 'ghost' does not exist"),
        (
            [Step("one", noop, may_finish=True), Step("two", noop, may_finish=True)],
            "step 'two' is unreachable",
        ),
        ([Step("one", noop, next=["two"]), Step("two", noop, next=["one"])], "has no path to a step that may finish"),
        ([Step("one", noop, may_finish=True), Step("one", noop, may_finish=True)], "duplicate step name 'one'"),
        ([Step("one", noop, may_finish=True, writes=["zzz"])], "writes 'zzz', which S does not have"),
        ([Step("one", noop, may_finish=True, reads=["q"])], "reads 'q', which S does not have"),
        ([Step("one", noop, may_finish=True, on_error="nope")], "on_error step 'nope' does not exist"),
        ([Step("one", "not callable", may_finish=True)], "is not callable"),  # type: ignore[arg-type]
    ],
)
def test_definition_errors_are_caught_when_the_machine_is_built(steps: list[Step], message: str) -> None:
    with pytest.raises(MachineDefinitionError) as info:
        Machine("m", "1", S, steps)
    assert message in str(info.value)
    assert info.value.machine == "m"


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(MachineDefinitionError) as info:
        Machine("m", "", S, [Step("one", noop, next=["x"], writes=["y"])])
    assert len(info.value.problems) >= 3


def test_a_start_step_that_does_not_exist_is_refused() -> None:
    with pytest.raises(MachineDefinitionError, match="start step 'zero' does not exist"):
        _machine(start="zero")


def test_the_digest_is_stable_and_changes_with_the_definition() -> None:
    assert _machine().digest == _machine().digest
    assert len(_machine().digest) == 64
    other = Machine("m", "2", S, [Step("one", noop, next=["two"], writes=["a"]), Step("two", noop, may_finish=True, reads=["a"], writes=["b"])])
    assert other.digest != _machine().digest


def test_the_view_holds_only_the_fields_the_step_reads() -> None:
    m = _machine()
    view = m.view("two", S(a=3, b="secret"))
    assert view.model_dump() == {"a": 3}
    assert not hasattr(view, "b")
    whole = m.view("one", S(a=1))  # no reads declared: the whole state, as a read-only copy
    assert isinstance(whole, S) and whole.model_dump() == S(a=1).model_dump()


def test_apply_accepts_a_declared_edge_and_merges_the_update() -> None:
    result = _machine().apply("one", S(), Goto("two", update={"a": 7}))
    assert isinstance(result, AppliedOutcome)
    assert result.state == S(a=7) and result.next_step == "two"


@pytest.mark.parametrize(
    ("step", "outcome", "code"),
    [
        ("one", Goto("one"), "undeclared_edge"),
        ("one", Goto("two", update={"b": "x"}), "unowned_field"),
        ("one", Goto("two", update={"a": "not an int"}), "schema_violation"),
        ("one", Finish(), "not_allowed_to_finish"),
        ("one", RequestApproval("why", resume_at="one"), "undeclared_edge"),
        ("one", None, "not_an_outcome"),
        ("one", "go to two", "not_an_outcome"),
    ],
)
def test_apply_refuses_illegal_outcomes_with_a_precise_code(step: str, outcome: object, code: str) -> None:
    result = _machine().apply(step, S(), outcome)
    assert isinstance(result, IllegalOutcome)
    assert result.error_code == code
    assert repr(step) in result.reason


def test_fail_is_always_legal_and_keeps_the_state() -> None:
    result = _machine().apply("one", S(a=1), Fail("nope"))
    assert isinstance(result, AppliedOutcome) and result.state == S(a=1)


def test_the_graph_renders_as_mermaid_through_transitions() -> None:
    text = _machine().mermaid()
    assert "stateDiagram-v2" in text
    assert "one --> two" in text and "two --> DONE: finish" in text


def module_level_agent(state: object, ctx: object) -> Finish:
    return Finish()


def test_agents_built_by_a_factory_are_named_by_their_step_unless_given_a_name() -> None:
    class S(BaseModel):
        n: int = 0

    def make(target: str | None) -> object:
        def agent(state: object, ctx: object) -> object:
            return Goto(target) if target else Finish()

        return agent

    explicit = make("fourth")
    explicit.agent_name = "reviewer.v2"  # type: ignore[attr-defined]
    m = Machine("factory", "1", S, steps=[
        Step("first", make("second"), next=["second"]),  # type: ignore[arg-type]
        Step("second", lambda s, c: Goto("third"), next=["third"]),
        Step("third", explicit, next=["fourth"]),  # type: ignore[arg-type]
        Step("fourth", module_level_agent, may_finish=True),
    ])
    # A factory's closures and lambdas would all be "make.<locals>.agent" / "<lambda>".
    assert [s.agent_name for s in m.steps.values()] == [
        "first", "second", "reviewer.v2", "module_level_agent",
    ]
