"""The JSON API under /api/: shapes, authentication, CSRF defence, decisions, exports equal to the CLI's."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from statecraft import Engine, RunStatus
from statecraft.audit.anchor import take_anchor
from statecraft.web.context import API_CLIENT_HEADER
from statecraft.web.search import PAGE_MAX
from tests.conftest import Cli
from tests.web.support import Web, api_headers, basic, start_payment

DOCS = Path(__file__).resolve().parents[2] / "docs" / "web.md"


def _approve(client: TestClient, run_id: str, login: str, digest: str, comment: str | None = None) -> httpx.Response:
    return client.post(f"/api/runs/{run_id}/approve", headers=api_headers(login),
                       json={"digest": digest, "comment": comment})


def test_the_openapi_document_describes_every_api_endpoint_and_no_page(web: Web) -> None:
    doc = web.client.get("/api/openapi.json").json()
    paths = set(doc["paths"])
    assert paths == {
        "/api/me", "/api/inbox", "/api/runs/{run_id}", "/api/runs/{run_id}/timeline",
        "/api/runs/{run_id}/bundle.jsonl", "/api/runs/{run_id}/approve", "/api/runs/{run_id}/reject",
        "/api/audit/events", "/api/audit/events.csv", "/api/audit/events.jsonl", "/api/ledger",
    }
    approve = doc["paths"]["/api/runs/{run_id}/approve"]["post"]
    assert {"200", "403", "409"} <= set(approve["responses"])
    assert "ApproveBody" in json.dumps(approve["requestBody"])
    assert {"GateView", "RunInfo", "TimelineView", "AuditEvent"} <= set(doc["components"]["schemas"])


def test_the_api_table_in_the_docs_matches_the_openapi_document(web: Web) -> None:
    doc = web.client.get("/api/openapi.json").json()
    served = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    table = set(re.findall(r"^\| `(GET|POST) (/api/[^`]+)` \|", DOCS.read_text(), re.M))
    assert table == served


def test_without_credentials_the_api_answers_401_with_a_basic_challenge(web: Web) -> None:
    answer = web.client.get("/api/inbox")
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthenticated"
    assert answer.headers["www-authenticate"].startswith("Basic ")
    assert web.client.get("/api/inbox", headers=basic("cfo", "wrong")).status_code == 401


def test_me_names_the_authenticated_principal(web: Web) -> None:
    assert web.client.get("/api/me", headers=basic("cfo")).json() == {
        "id": "user:cfo", "login": "cfo", "method": "basic"}


def test_the_inbox_json_carries_the_gate_the_page_shows(web: Web, engine: Engine) -> None:
    run = start_payment(engine, 5000)
    body = web.client.get("/api/inbox", headers=basic("cfo")).json()
    assert body["machines"] == ["web_review"]
    assert body["policies"] == ["deadline", "four-eyes", "group", "rule:amount_over_1k"]
    (item,) = body["items"]
    assert run.pending is not None
    assert item["run_id"] == run.run_id
    assert item["proposal_digest"] == run.pending.proposal_digest
    assert item["rules"] == ["amount_over_1k"]
    assert (item["required"], item["approved_by"], item["still_needed"]) == (2, [], 2)
    assert item["approver_group"] == ["user:cfo", "user:controller", "user:treasurer"]
    assert item["deadline_at"] and item["on_timeout"] == "fail"
    assert (item["may_approve"], item["refusal"]) == (True, None)
    clerk = web.client.get("/api/inbox", headers=basic("clerk")).json()["items"][0]
    assert clerk["may_approve"] is False and "not in the approver group" in clerk["refusal"]


def test_approving_needs_the_client_header_and_a_json_body(web: Web, engine: Engine) -> None:
    run = start_payment(engine, 10)
    assert run.pending is not None
    digest = run.pending.proposal_digest
    no_header = web.client.post(f"/api/runs/{run.run_id}/approve", headers=basic("alice"), json={"digest": digest})
    assert no_header.status_code == 403 and no_header.json()["error"] == "csrf"
    as_form = web.client.post(f"/api/runs/{run.run_id}/approve", headers=api_headers("alice"),
                              data={"digest": digest})
    assert as_form.status_code == 415
    as_text = web.client.post(f"/api/runs/{run.run_id}/approve", content=json.dumps({"digest": digest}),
                              headers={**api_headers("alice"), "Content-Type": "text/plain"})
    assert as_text.status_code == 415
    assert "approval.granted" not in [e.event_type for e in engine.events(run.run_id)]


def test_a_logged_in_browser_session_cannot_approve_through_the_api_without_the_header(
    web: Web, engine: Engine
) -> None:
    run = start_payment(engine, 10)
    assert run.pending is not None
    web.login("alice")
    forged = web.client.post(f"/api/runs/{run.run_id}/approve", json={"digest": run.pending.proposal_digest})
    assert forged.status_code == 403
    assert engine.get(run.run_id).status == RunStatus.WAITING_FOR_APPROVAL


def test_a_digest_field_is_required_and_a_stale_one_is_refused_with_409(web: Web, engine: Engine) -> None:
    run = start_payment(engine, 10)
    missing = web.client.post(f"/api/runs/{run.run_id}/approve", headers=api_headers("alice"), json={})
    assert missing.status_code == 422
    stale = _approve(web.client, run.run_id, "alice", "0" * 64)
    assert stale.status_code == 409
    assert stale.json()["error"] == "ApprovalMismatch"
    reject = web.client.post(f"/api/runs/{run.run_id}/reject", headers=api_headers("alice"),
                             json={"digest": "0" * 64, "reason": "no"})
    assert reject.status_code == 409
    assert engine.get(run.run_id).status == RunStatus.WAITING_FOR_APPROVAL


def test_four_eyes_through_the_api_waits_then_finishes(web: Web, engine: Engine) -> None:
    run = start_payment(engine, 5000)
    assert run.pending is not None
    digest = run.pending.proposal_digest
    first = _approve(web.client, run.run_id, "cfo", digest, "ok").json()
    assert first["run"]["status"] == "WAITING_FOR_APPROVAL"
    assert (first["gate"]["approved_by"], first["gate"]["still_needed"]) == (["user:cfo"], 1)
    again = _approve(web.client, run.run_id, "cfo", digest)
    assert again.status_code == 403 and "already approved" in again.json()["message"]
    second = _approve(web.client, run.run_id, "treasurer", digest).json()
    assert second["run"]["status"] == "DONE" and second["gate"] is None
    granted = [(e.actor_id, e.outcome) for e in engine.events(run.run_id) if e.event_type == "approval.granted"]
    assert granted == [("user:cfo", "pending"), ("user:treasurer", "success")]


def test_rejecting_through_the_api_fails_the_run(web: Web, engine: Engine) -> None:
    run = start_payment(engine, 10)
    assert run.pending is not None
    answer = web.client.post(f"/api/runs/{run.run_id}/reject", headers=api_headers("alice"),
                             json={"digest": run.pending.proposal_digest, "reason": "vendor unknown"})
    assert answer.status_code == 200
    assert answer.json()["run"]["status"] == "FAILED"
    assert web.client.get("/api/runs/nope", headers=basic("alice")).status_code == 404


def test_the_timeline_json_marks_redactions_and_resolves_bodies(web: Web, engine: Engine) -> None:
    run = start_payment(engine, 10, note="n-1")
    body = web.client.get(f"/api/runs/{run.run_id}/timeline", headers=basic("alice")).json()
    assert [e["event"]["event_type"] for e in body["events"]] == [e.event_type for e in engine.events(run.run_id)]
    drafted = next(e for e in body["events"] if e["event"]["event_type"] == "step.completed")
    assert drafted["input"]["kind"] == "json" and '"note": "n-1"' in drafted["input"]["text"]
    assert drafted["event"]["model_id"] == "claude-draft" and drafted["event"]["tokens_in"] == 1200
    assert body["graph"]["path"] == ["draft", "review"]
    assert body["gate"]["proposal_digest"] == run.pending.proposal_digest  # type: ignore[union-attr]


def test_the_exports_are_byte_for_byte_what_audit_log_prints(web: Web, engine: Engine, db_path: Path) -> None:
    for amount in (10, 5000, 20):
        start_payment(engine, amount)
    small = engine.list(status=RunStatus.WAITING_FOR_APPROVAL)[-1]
    assert small.pending is not None
    engine.approve(small.run_id, by="user:cfo", digest=small.pending.proposal_digest,
                   comment='=HYPERLINK("http://evil.example","click")')
    cli = Cli(db_path)
    for query, options in (({}, ()), ({"event": "approval.*"}, ("--event", "approval.*")),
                           ({"actor": "user:clerk", "after": "3"}, ("--actor", "user:clerk", "--after", "3"))):
        csv_web = web.client.get("/api/audit/events.csv", params=query, headers=basic("alice"))
        assert csv_web.status_code == 200 and csv_web.headers["content-type"].startswith("text/csv")
        assert csv_web.content == cli("audit", "log", *options, "--csv").stdout_bytes
        cells = [c for row in csv.reader(io.StringIO(csv_web.text)) for c in row]
        assert not any(c.startswith(("=", "+", "@")) for c in cells)  # formula cells defused, as by the CLI
        jsonl_web = web.client.get("/api/audit/events.jsonl", params=query, headers=basic("alice"))
        assert jsonl_web.content == cli("audit", "log", *options, "--json").stdout_bytes


def test_events_page_by_seq_with_the_filters_of_audit_log(web: Web, engine: Engine) -> None:
    for amount in (10, 20, 30):
        start_payment(engine, amount)
    requested = [e.seq for e in engine.events() if e.event_type == "approval.requested"]
    first = web.client.get("/api/audit/events", params={"event": "approval.requested", "limit": 2},
                           headers=basic("alice")).json()
    assert [e["seq"] for e in first["events"]] == requested[:2]
    rest = web.client.get("/api/audit/events", params={"event": "approval.requested", "after": first["next_after"]},
                          headers=basic("alice")).json()
    assert [e["seq"] for e in rest["events"]] == requested[2:] and rest["next_after"] is None
    bad = web.client.get("/api/audit/events", params={"until": "2025-01-01T00:00:00"}, headers=basic("alice"))
    assert bad.status_code == 400 and "offset" in bad.json()["message"]
    # A limit is bounded, and the OpenAPI document says so; without one an export has every event.
    too_big = web.client.get("/api/audit/events.jsonl", params={"limit": PAGE_MAX + 1}, headers=basic("alice"))
    assert too_big.status_code == 422
    everything = web.client.get("/api/audit/events.jsonl", headers=basic("alice"))
    assert everything.status_code == 200 and len(everything.text.splitlines()) == len(engine.events())
    spec = web.client.get("/api/openapi.json").json()
    limits = {path: next(p["schema"] for p in spec["paths"][path]["get"]["parameters"] if p["name"] == "limit")
              for path in ("/api/audit/events", "/api/audit/events.csv")}
    assert all(f"'maximum': {PAGE_MAX}" in str(schema) for schema in limits.values()), limits


def test_the_ledger_json_is_the_verify_report_and_the_last_anchor(web: Web, engine: Engine, db_path: Path) -> None:
    start_payment(engine, 10)
    anchor = take_anchor(engine.db, by="auditor@example.com")
    body = web.client.get("/api/ledger", headers=basic("alice")).json()
    assert body["report"]["ok"] is True and body["report"]["last_seq"] == anchor.seq
    assert body["summary"].startswith(f"OK up to seq {anchor.seq}")
    assert body["summary"] == Cli(db_path)("audit", "verify").stdout.strip()  # the CLI's own line
    assert body["last_anchor"] == {"source": "ledger.anchored event", "seq": anchor.seq,
                                   "entry_hash": anchor.entry_hash, "time": anchor.time, "by": "auditor@example.com"}


def test_a_run_bundle_downloads_and_verifies_offline(web: Web, engine: Engine, tmp_path: Path) -> None:
    from statecraft.audit.export import verify_export

    run = start_payment(engine, 10)
    answer = web.client.get(f"/api/runs/{run.run_id}/bundle.jsonl", headers=basic("alice"))
    assert answer.status_code == 200
    bundle = tmp_path / "run.jsonl"
    bundle.write_text(answer.text)
    assert verify_export(bundle).ok


def test_the_client_header_is_the_one_documented(web: Web) -> None:
    assert API_CLIENT_HEADER in DOCS.read_text()


def test_the_custom_authenticator_example_in_the_docs_works(tmp_path: Path, monkeypatch: object) -> None:
    block = re.findall(r"```python\n(.+?)```", DOCS.read_text(), re.S)
    assert len(block) == 1
    monkeypatch.chdir(tmp_path)  # type: ignore[attr-defined]
    namespace: dict[str, object] = {}
    exec(compile(block[0], str(DOCS), "exec"), namespace)
    engine = namespace["engine"]
    assert isinstance(engine, Engine)
    with engine, TestClient(namespace["app"], base_url="http://review.example.com") as client:  # type: ignore[arg-type]
        me = client.get("/api/me", headers={"X-Client-Cert-Subject": "CN=dana"})
        assert me.json() == {"id": "CN=dana", "login": "CN=dana", "method": "mtls"}
        assert client.get("/api/me").status_code == 401


def test_a_gate_past_its_deadline_is_marked_and_cannot_be_approved_any_more(web: Web, db_path: Path) -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=5)  # the step's approval deadline is four hours
    with Engine(db_path, clock=lambda: long_ago) as earlier:
        run = start_payment(earlier, 5000)
    assert run.pending is not None
    item = web.client.get("/api/inbox", headers=basic("cfo")).json()["items"][0]
    assert item["overdue"] is True
    assert "passed: the next worker pass applies it" in web.client.get("/inbox", headers=basic("cfo")).text
    before = web.engine.events(run.run_id)
    late = _approve(web.client, run.run_id, "cfo", run.pending.proposal_digest)
    assert late.status_code == 409
    # Refused, writing nothing: the worker records approval.expired (issue #8).
    assert web.engine.events(run.run_id) == before


def test_an_engine_built_as_serve_builds_it_records_the_authenticated_principal(
    db_path: Path, users_file: Path
) -> None:
    # statecraft serve builds its engine with authenticate=web_principal: every decision
    # then carries the principal the web request authenticated, beside the OS account.
    import pytest

    from statecraft import NotAuthenticated
    from statecraft.web.decide import web_principal
    from tests.web.support import make_client

    with Engine(db_path) as service:  # the run is started by a service, outside any web request
        run = start_payment(service, 5_000_00)
    assert run.pending is not None
    with Engine(db_path, authenticate=web_principal) as engine, make_client(engine, users_file) as client:
        answer = client.post(
            f"/api/runs/{run.run_id}/approve", headers=api_headers("cfo"),
            json={"digest": run.pending.proposal_digest, "comment": "ok"},
        )
        assert answer.status_code == 200, answer.text
        granted = [e for e in engine.events(run.run_id) if e.event_type == "approval.granted"][-1]
        identity = json.loads(granted.payload_json or "{}")["identity"]
        assert identity["principal"] == granted.actor_id == "user:cfo"
        # Outside a web request, the same engine refuses a named actor it cannot vouch for.
        with pytest.raises(NotAuthenticated):
            engine.cancel(run.run_id, by="ops@example.com", reason="cleanup")
