"""Every error statecraft raises, in one tree.

One root, two main branches: "you built it wrong" (a definition or usage
error, fixed by changing code or configuration) and "the run went wrong" (a
request that the lifecycle or the run's current state forbids). Store and
ledger errors form their own branches because operators act on them
differently (restore a backup, check the file, call a reviewer).

::

    StatecraftError
    ├── DefinitionError                 you built it wrong
    │   ├── MachineDefinitionError      invalid machine graph / schema (at build time)
    │   ├── MachineLoadError            a machine reference cannot be imported
    │   └── KeyringError                a signing key or keyring file is unusable
    ├── RunError                        the run went wrong            (run_id)
    │   ├── RunNotFound                 no run with that id
    │   │   └── AmbiguousRunId            a run id prefix names more than one run
    │   ├── IllegalTransition           lifecycle or step-graph edge not declared
    │   │   └── ApprovalExpired           the gate's deadline passed: its on-timeout action decides
    │   ├── ApprovalMismatch            the pending proposal is not the one approved
    │   ├── ApprovalRefused             this actor may not decide this gate (policy)
    │   │   └── SignatureRefused          the approval's signature is missing or does not check
    │   ├── IdentityError               who is asking cannot be established
    │   │   ├── InvalidActorId            the claimed id is not acceptable (identity.py)
    │   │   └── NotAuthenticated          the Engine's authenticate hook refused the request
    │   ├── LeaseHeld                   another engine is advancing the run
    │   ├── MachineMismatch             the loaded definition or code is not the run's
    │   ├── AdvanceInterrupted          the request committed; advancing it inline then stopped
    │   ├── RunMoved                    the run moved while a step ran (transition.py)
    │   └── AgentError                  an agent's call failed (agents/errors.py):
    │       └── LLMError                  LLMUnavailable (LLMOverloaded, LLMTimeout,
    │                                     LLMCircuitOpen), LLMRateLimited (LLMRateLimitWait),
    │                                     LLMProtocolError, LLMInvalidOutput,
    │                                     LLMSpendLimitReached, LLMAuthError,
    │                                     LLMPermissionDenied, LLMNotFound,
    │                                     LLMBadRequest (LLMContextOverBudget)
    ├── StoreError                      the database cannot be used
    │   └── NotAStatecraftDatabase      the file is not (or not yet) a statecraft store
    └── LedgerError                     the audit ledger cannot be appended to / read

Every error carries structured attributes (``run_id``, ``status``,
``trigger``, ``step`` where they apply) so services can branch on them without
parsing messages, and its ``str()`` is one line suitable for the CLI.

A request that raises has written nothing (docs/embedding.md). The one
exception says so in its name: :class:`AdvanceInterrupted` is raised only
after a request committed, when advancing the run inline then stopped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .views import RunInfo

__all__ = [
    "AdvanceInterrupted",
    "AmbiguousRunId",
    "ApprovalExpired",
    "ApprovalMismatch",
    "ApprovalRefused",
    "DefinitionError",
    "IdentityError",
    "IllegalTransition",
    "InvalidActorId",
    "KeyringError",
    "LeaseHeld",
    "LedgerError",
    "MachineDefinitionError",
    "MachineLoadError",
    "MachineMismatch",
    "NotAStatecraftDatabase",
    "NotAuthenticated",
    "RunError",
    "RunNotFound",
    "SignatureRefused",
    "StatecraftError",
    "StoreError",
]


class StatecraftError(Exception):
    """Root of every error statecraft raises on purpose."""


class DefinitionError(StatecraftError):
    """The caller built something wrong; changing code or configuration fixes it."""


class MachineDefinitionError(DefinitionError):
    """A machine definition is invalid; raised when the ``Machine`` is built.

    Attributes:
        machine: the machine's name.
        problems: every problem found, one line each (all are reported at once).
    """

    def __init__(self, machine: str, problems: list[str]) -> None:
        self.machine = machine
        self.problems = list(problems)
        super().__init__(f"machine {machine!r} is invalid: " + "; ".join(self.problems))


class MachineLoadError(DefinitionError):
    """A machine reference (``path.py[:attr]`` or ``module:attr``) cannot be loaded.

    Attributes:
        ref: the reference as given.
    """

    def __init__(self, ref: str, reason: str) -> None:
        self.ref = ref
        super().__init__(f"cannot load machine {ref!r}: {reason}")


class RunError(StatecraftError):
    """A request about a run that its lifecycle or current state forbids.

    Attributes:
        run_id: the run concerned (``None`` when no run exists yet).
    """

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        self.run_id = run_id
        super().__init__(message)


class RunNotFound(RunError):
    """No run with this id exists in the database."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run with id {run_id!r}", run_id=run_id)


class AmbiguousRunId(RunNotFound):
    """A run id prefix that names more than one run (``Engine.resolve_run_id``).

    A ``RunNotFound``: no single run is named. The message lists the candidates
    (at most ten) so the caller can paste a longer prefix.

    Attributes:
        run_id: the prefix as given.
        candidates: full ids of runs it matches (at most ten, sorted).
    """

    def __init__(self, prefix: str, candidates: list[str]) -> None:
        self.candidates = list(candidates)
        shown = ", ".join(self.candidates[:10]) + (", …" if len(self.candidates) > 10 else "")
        RunError.__init__(self, f"run id prefix {prefix!r} is ambiguous: it matches {shown}", run_id=prefix)


class IllegalTransition(RunError):
    """A transition that neither the lifecycle table nor the machine's graph declares.

    Raised before anything is written: the database is unchanged. When an *agent*
    proposes an illegal move, the engine does not raise this to the caller; it
    fails the run and audits the reason (DESIGN.md invariant 1).

    Attributes:
        run_id: the run.
        status: the run's status when the request was made (a ``RunStatus`` value).
        trigger: the lifecycle trigger requested (``approve``, ``retry``, …).
        step: the step concerned, when the problem is in the step graph.
    """

    def __init__(
        self,
        message: str,
        *,
        run_id: str | None = None,
        status: str | None = None,
        trigger: str | None = None,
        step: str | None = None,
    ) -> None:
        self.status = status
        self.trigger = trigger
        self.step = step
        super().__init__(message, run_id=run_id)


class ApprovalMismatch(RunError):
    """``approve(..., digest=D)`` named a proposal that is no longer pending.

    Attributes:
        expected: the digest the approver saw.
        actual: the digest of the proposal pending now.
    """

    def __init__(self, run_id: str, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"run {run_id}: proposal digest is {actual}, not {expected}; "
            "review the current proposal (statecraft status) before approving",
            run_id=run_id,
        )


class ApprovalRefused(RunError):
    """The gate's approval policy does not let this actor approve (or reject) now.

    Raised before anything is written: a refused approval leaves no event.
    Causes: self-approval (the actor started the run or requested the gate),
    an actor outside the approver group or explicitly excluded, or an actor
    approving the same gate twice (quorum needs distinct people).

    Attributes:
        actor: the refused actor id.
        why: the policy rule that refused it, one line.
    """

    def __init__(self, run_id: str, actor: str, why: str) -> None:
        self.actor = actor
        self.why = why
        super().__init__(f"run {run_id}: approval refused: {why}", run_id=run_id)


class SignatureRefused(ApprovalRefused):
    """An approval's signature is missing where required, or does not check.

    It does not verify over the pending request and the approver's id, or
    the keyring does not bind its key to the approver, or the engine has no
    keyring to check against (statecraft/signing.py). Nothing is written.
    """


class LeaseHeld(RunError):
    """Another engine holds an unexpired lease on the run (DESIGN.md invariant 5).

    Attributes:
        owner: the lease owner's id.
        expires_at: when the lease expires (UTC ISO-8601).
    """

    def __init__(self, run_id: str, owner: str, expires_at: str) -> None:
        self.owner = owner
        self.expires_at = expires_at
        super().__init__(
            f"run {run_id} is being advanced by {owner} (lease until {expires_at})",
            run_id=run_id,
        )


class MachineMismatch(RunError):
    """The machine at hand is not the one the run started with: its definition or its code changed.

    Raised before anything is written: a run continues (approve, retry,
    resume, a worker) only on the definition *and* code it started with
    (``Machine.digest`` covers both; docs/audit.md, "The machine digest").

    Attributes:
        expected: the run's recorded machine digest.
        actual: the digest of the machine offered.
        changed: what differs, when the run recorded both parts:
            ``"definition"``, ``"code"`` or ``"definition and code"``;
            ``None`` when unknown.
        files: source files whose content differs from the run's start
            (when the code changed and the run recorded its files).
    """

    def __init__(
        self,
        run_id: str,
        expected: str,
        actual: str,
        *,
        changed: str | None = None,
        files: tuple[str, ...] = (),
    ) -> None:
        self.expected = expected
        self.actual = actual
        self.changed = changed
        self.files = tuple(files)
        what = f"; the {changed} changed" if changed else ""
        if files:
            shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
            what += f" ({shown})"
        super().__init__(
            f"run {run_id} was started with machine digest {expected[:12]}…, "
            f"the machine loaded has digest {actual[:12]}…{what}; "
            "load the version the run started with",
            run_id=run_id,
        )


class ApprovalExpired(IllegalTransition):
    """A decision on a gate whose approval deadline has passed.

    Raised before anything is written: past its deadline the gate is decided
    by its on-timeout action (``approval.expired``, actor ``system``), which
    a worker or ``Engine.expire_approvals()`` records, not by a late human.

    Attributes:
        deadline_at: the gate's deadline (UTC ISO-8601).
    """

    def __init__(self, run_id: str, deadline_at: str, trigger: str) -> None:
        self.deadline_at = deadline_at
        super().__init__(
            f"run {run_id}: the gate's approval deadline {deadline_at} has passed; "
            "its on-timeout action decides it (statecraft worker), not a late decision",
            run_id=run_id, status="WAITING_FOR_APPROVAL", trigger=trigger,
        )


class IdentityError(RunError):
    """Who is asking cannot be established, so the request is refused; nothing is written."""


class InvalidActorId(IdentityError):
    """A claimed actor id is not acceptable (statecraft/identity.py states the rules).

    Attributes:
        actor: the id as given, escaped (``repr``) so that control characters show.
        why: the rule it breaks, one line.
    """

    def __init__(self, actor: object, why: str, *, run_id: str | None = None) -> None:
        self.actor = ascii(actor)
        self.why = why
        where = f"run {run_id}: " if run_id else ""
        super().__init__(f"{where}actor id {self.actor} refused: {why}", run_id=run_id)


class NotAuthenticated(IdentityError):
    """The engine's ``authenticate`` hook did not vouch for the request.

    Attributes:
        actor: the claimed (normalised) actor id.
    """

    def __init__(self, actor: str, why: str, *, run_id: str | None = None) -> None:
        self.actor = actor
        where = f"run {run_id}: " if run_id else ""
        super().__init__(f"{where}{actor} is not authenticated: {why}", run_id=run_id)


class AdvanceInterrupted(RunError):
    """The request WAS committed; advancing the run inline afterwards then stopped.

    Raised by ``start``, ``start_created``, ``approve`` and ``retry`` with
    ``advance=True`` when an error not about the run itself (a store
    failure, a statecraft error an agent raised about its own setup) stops
    the inline advance. The committed transition stands and the run keeps
    its last checkpoint: a worker or ``resume`` continues it. This is the
    one error after which something was written.

    Attributes:
        run: the run as it stood when advancing stopped (``None`` if it could
            not be read either).
    """

    def __init__(self, run_id: str, run: RunInfo | None, cause: BaseException) -> None:
        self.run = run
        super().__init__(
            f"run {run_id}: the request was committed, then advancing it inline stopped: "
            f"{type(cause).__name__}: {cause}",
            run_id=run_id,
        )


class KeyringError(DefinitionError):
    """A signing key file or a keyring entry cannot be used (statecraft/signing.py).

    Attributes:
        path: the file concerned, if any.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(message if path is None else f"{path}: {message}")


class StoreError(StatecraftError):
    """The database cannot be opened or used."""


class NotAStatecraftDatabase(StoreError):
    """The file exists but is not a statecraft database (or is of a newer schema)."""


class LedgerError(StatecraftError):
    """The audit ledger cannot be read or appended to consistently."""
