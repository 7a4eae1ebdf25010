"""Run leases: at most one engine advances a run at a time (DESIGN.md invariant 5).

A lease is two columns of the run row, ``lease_owner`` and
``lease_expires_at``. It is taken with a conditional UPDATE under the write
lock, renewed by a background thread while its engine works on the run,
and released at a gate, a terminal status or when advancing stops. An
expired lease may be taken over; the takeover is itself audited
(``lease.taken_over``).

What a lease protects, precisely: every step commit is conditional on the
committing engine still being the lease owner *and* on the run's position
(``run_seq``), so two engines can never both commit a step of one run, even
if a holder stalls past its expiry (a fencing token). What a lease cannot
do is stop a stalled holder's agent call that is still in flight: after a
takeover, the step may execute twice (at-least-once), and only one of the
two commits. Side effects therefore go through idempotency keys.

Owner ids are ``host:pid:random``. A lease whose owner is a process on this
host that no longer exists is treated as expired at once, so a crashed
process's runs resume without waiting out the lease. That assumes host
names are unique among processes sharing the database (true for Docker and
Kubernetes defaults); ``Engine(trust_local_pids=False)`` turns it off.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from ._time import format_utc
from .store.db import Database
from .store.runs import renew_leases
from .store.txn import write_tx

__all__ = ["LeaseKeeper", "new_owner_id", "owner_is_gone"]

_HOST = socket.gethostname()


def new_owner_id() -> str:
    """A fresh lease owner id: ``host:pid:random``."""
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_gone(owner: str | None) -> bool:
    """Whether ``owner`` names a process on this host that no longer exists.

    ``False`` whenever that cannot be known (another host, an id of another
    shape, a process we may not signal): only a certainly dead local owner
    counts. A reused pid makes a dead owner look alive, which only delays a
    takeover until the lease expires (the safe direction).
    """
    if not owner:
        return False
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != _HOST or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, but not ours to signal
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    # A killed child that its parent has not reaped yet still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


class LeaseKeeper:
    """Renews the leases one engine holds, from one daemon thread.

    Every ``lease / 3`` it extends, in one short write transaction, the
    expiry of every run this engine is advancing. A run whose lease is found
    taken (the UPDATE did not match it) is marked lost; the engine then stops
    waiting for that run's agent and commits nothing for it.

    Args:
        db: the database.
        owner: this engine's owner id.
        lease: how long a lease lasts without renewal.
        clock: the engine's clock (aware UTC).
    """

    def __init__(self, db: Database, owner: str, lease: timedelta, clock: Callable[[], datetime]) -> None:
        self._db = db
        self._owner = owner
        self._lease = lease
        self._clock = clock
        self._held: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, run_id: str) -> threading.Event:
        """Start renewing ``run_id``'s lease; returns the event set if the lease is lost."""
        lost = threading.Event()
        with self._lock:
            self._held[run_id] = lost
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._loop, name=f"statecraft-lease-{self._owner}", daemon=True
                )
                self._thread.start()
        return lost

    def drop(self, run_id: str) -> None:
        """Stop renewing ``run_id``'s lease (the caller releases it)."""
        with self._lock:
            self._held.pop(run_id, None)

    def held(self) -> list[str]:
        """Run ids whose leases are being renewed."""
        with self._lock:
            return list(self._held)

    def close(self) -> None:
        """Stop the renewal thread (leases then expire unless released)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _loop(self) -> None:
        period = max(self._lease.total_seconds() / 3, 0.05)
        while not self._stop.wait(period):
            try:
                self.renew()
            except Exception:  # a failed renewal is retried next period; expiry is the backstop
                continue

    def renew(self) -> None:
        """Extend every held lease now; mark the ones found taken as lost."""
        with self._lock:
            held = dict(self._held)
        if not held:
            return
        expires = format_utc(self._clock() + self._lease)
        with write_tx(self._db) as tx:
            still = renew_leases(tx, self._owner, held, expires)
        for run_id, lost in held.items():
            if run_id not in still:
                lost.set()
