"""The reviewer's pages over HTTP (FastAPI TestClient on a real SQLite file): inbox, decisions, timeline, ledger."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from markupsafe import escape

from statecraft import Engine, InvalidActorId, RunStatus
from statecraft.audit.anchor import take_anchor
from statecraft.audit.redact import redact_event
from statecraft.loader import load_machine

from tests.web.support import HOST, MACHINE_REF, REPO_TOY, Web, csrf_of, field_of, make_client, start_payment


def _events(engine: Engine, run_id: str) -> list[str]:
    return [e.event_type for e in engine.events(run_id)]


# -- logging in ------------------------------------------------------------------------


def test_a_page_asked_for_without_identity_redirects_to_the_login_form(web: Web) -> None:
    answer = web.client.get("/inbox?machine=x", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=%2Finbox%3Fmachine%3Dx"


def test_a_wrong_password_and_an_unknown_login_get_the_same_refusal(web: Web) -> None:
    page = web.client.get("/login")
    for login, password in (("cfo", "wrong"), ("nobody", "cfo-pw")):
        answer = web.client.post("/login", data={"csrf": csrf_of(page.text, "/login"), "login": login, "password": password})
        assert answer.status_code == 401
        assert "Wrong login or password." in answer.text
        assert "statecraft_session" not in answer.headers.get("set-cookie", "")


def test_the_login_form_itself_refuses_a_post_without_its_csrf_token(web: Web) -> None:
    web.client.get("/login")
    answer = web.client.post("/login", data={"login": "cfo", "password": "cfo-pw"}, follow_redirects=False)
    assert answer.status_code == 403
    assert "statecraft_session" not in answer.headers.get("set-cookie", "")


def test_after_login_the_redirect_never_leaves_the_site(web: Web) -> None:
    for target in ("//evil.example/x", "https://evil.example", "/\\evil.example", "javascript:alert(1)"):
        page = web.client.get("/login")
        answer = web.client.post("/login", data={"csrf": csrf_of(page.text, "/login"), "login": "cfo", "password": "cfo-pw",
                                                 "next": target}, follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/inbox", target


def test_logging_out_ends_the_session(web: Web) -> None:
    web.login("cfo")
    assert web.client.get("/inbox", follow_redirects=False).status_code == 200
    web.logout()
    assert web.client.get("/inbox", follow_redirects=False).status_code == 303


def test_a_user_removed_from_the_users_file_loses_their_session(web: Web, users_file: Path) -> None:
    web.login("cfo")
    assert web.client.get("/inbox", follow_redirects=False).status_code == 200
    kept = [line for line in users_file.read_text().splitlines() if not line.startswith("cfo ")]
    users_file.write_text("\n".join(kept) + "\n")
    assert web.client.get("/inbox", follow_redirects=False).status_code == 303


# -- the inbox -------------------------------------------------------------------------


def test_the_inbox_shows_proposal_digest_rule_approvers_progress_and_deadline(web: Web, engine: Engine) -> None:
    run = start_payment(engine, 5000, note="invoice 42")
    web.login("cfo")
    page = web.client.get("/inbox").text
    assert run.run_id in page
    assert run.pending is not None
    assert run.pending.reason and escape(run.pending.reason) in page  # the proposal
    assert run.pending.proposal_digest in page
    assert "amount_over_1k" in page  # the escalation rule that fired
    assert "2 distinct of user:cfo, user:controller, user:treasurer" in page  # who may approve
    assert "0 of 2" in page and "2 more needed" in page
    deadline = re.search(r"deadline</dt><dd>(\S+Z) \(then: fail\)", page)
    assert deadline, "the approval deadline is shown"
    assert deadline.group(1) > run.updated_at
    assert "may approve" in page


def test_the_inbox_lists_the_newest_request_first(web: Web, engine: Engine) -> None:
    older = start_payment(engine, 5000, note="older")
    newer = start_payment(engine, 7000, note="newer")
    web.login("cfo")
    page = web.client.get("/inbox").text
    assert page.index(newer.run_id) < page.index(older.run_id)


def test_the_inbox_filters_by_machine_and_by_policy(web: Web, engine: Engine) -> None:
    four_eyes = start_payment(engine, 5000)
    single = start_payment(engine, 10)
    toy = engine.start(load_machine(REPO_TOY), "one two three four five", by="user:clerk", ref=REPO_TOY)
    assert toy.status == RunStatus.WAITING_FOR_APPROVAL
    web.login("cfo")
    everything = web.client.get("/inbox").text
    assert all(r.run_id in everything for r in (four_eyes, single, toy))
    by_machine = web.client.get("/inbox", params={"machine": "toy"}).text
    assert toy.run_id in by_machine and four_eyes.run_id not in by_machine and single.run_id not in by_machine
    by_rule = web.client.get("/inbox", params={"policy": "rule:amount_over_1k"}).text
    assert four_eyes.run_id in by_rule and single.run_id not in by_rule and toy.run_id not in by_rule
    by_quorum = web.client.get("/inbox", params={"policy": "four-eyes"}).text
    assert four_eyes.run_id in by_quorum and single.run_id not in by_quorum
    assert "Nothing waits for approval with these filters" in web.client.get(
        "/inbox", params={"machine": "toy", "policy": "four-eyes"}).text


# -- deciding --------------------------------------------------------------------------


def test_four_eyes_progress_is_visible_and_the_second_approval_finishes_the_run(web: Web, engine: Engine) -> None:
    run = start_payment(engine, 5000)
    web.login("cfo")
    first = web.decide(run.run_id, text="checked against PO 7")
    assert first.status_code == 303
    page = web.client.get(first.headers["location"]).text
    assert "gate waits for more approvers" in page
    assert "1 of 2" in page and "user:cfo" in page and "1 more needed" in page
    assert engine.get(run.run_id).status == RunStatus.WAITING_FOR_APPROVAL
    web.logout()
    web.login("controller")
    second = web.decide(run.run_id, text="agreed")
    assert second.status_code == 303
    assert engine.get(run.run_id).status == RunStatus.DONE
    assert 'id="run-status">DONE' in web.client.get(second.headers["location"]).text


def test_the_approver_is_the_authenticated_principal_never_a_form_field(web: Web, engine: Engine) -> None:
    run = start_payment(engine, 10)
    web.login("alice")
    answer = web.decide(run.run_id, text="ok", by="user:cfo", actor_id="user:cfo", principal="user:cfo")
    assert answer.status_code == 303
    granted = [e for e in engine.events(run.run_id) if e.event_type == "approval.granted"]
    assert [(e.actor_type, e.actor_id) for e in granted] == [("human", "alice@example.com")]


def test_a_stale_digest_is_refused_and_nothing_is_written(web: Web, engine: Engine) -> None:
    run = start_payment(engine, 5000)
    web.login("cfo")
    before = _events(engine, run.run_id)
    answer = web.decide(run.run_id, digest="0" * 64, text="ok")
    assert answer.status_code == 409
    assert "The proposal changed since you loaded the page" in answer.text
    assert _events(engine, run.run_id) == before
    rejected = web.decide(run.run_id, "reject", text="no", digest="f" * 64)
    assert rejected.status_code == 409
    assert _events(engine, run.run_id) == before


def test_a_page_loaded_before_the_proposal_changed_cannot_decide_on_the_new_one(web: Web, engine: Engine) -> None:
    run = start_payment(engine, 10)
    web.login("alice")
    page = web.client.get(f"/runs/{run.run_id}").text
    old = {"csrf": csrf_of(page, f"/runs/{run.run_id}/approve"),
           "digest": field_of(page, f"/runs/{run.run_id}/approve", "digest"), "comment": "ok"}
    # Meanwhile another reviewer rejects, an operator retries, and the gate asks again with a new state.
    engine.reject(run.run_id, by="user:cfo", reason="wrong vendor")
    asked_again = engine.retry(run.run_id, by="user:cfo")
    assert asked_again.pending is not None and asked_again.pending.proposal_digest != old["digest"]
    before = _events(engine, run.run_id)
    answer = web.client.post(f"/runs/{run.run_id}/approve", data=old, follow_redirects=False)
    assert answer.status_code == 409
    assert _events(engine, run.run_id) == before
    fresh = web.decide(run.run_id, text="seen the new one")
    assert fresh.status_code == 303 and engine.get(run.run_id).status == RunStatus.DONE


def test_a_post_without_a_csrf_token_is_refused_and_nothing_is_written(web: Web, engine: Engine) -> None:
    run = start_payment(engine, 10)
    web.login("alice")
    before = _events(engine, run.run_id)
    assert run.pending is not None
    for csrf in ("", "garbage", "a.b"):
        answer = web.client.post(f"/runs/{run.run_id}/approve", follow_redirects=False,
                                 data={"csrf": csrf, "digest": run.pending.proposal_digest, "comment": "ok"})
        assert answer.status_code == 403
        assert "CSRF" in answer.text
    assert _events(engine, run.run_id) == before


def test_a_csrf_token_minted_for_another_run_or_another_user_is_refused(
    web: Web, engine: Engine, users_file: Path
) -> None:
    one, other = start_payment(engine, 10), start_payment(engine, 20)
    web.login("alice")
    page = web.client.get(f"/runs/{one.run_id}").text
    token_for_one = csrf_of(page, f"/runs/{one.run_id}/approve")
    assert other.pending is not None
    answer = web.client.post(f"/runs/{other.run_id}/approve", follow_redirects=False,
                             data={"csrf": token_for_one, "digest": other.pending.proposal_digest})
    assert answer.status_code == 403
    with make_client(engine, users_file) as second_browser:
        intruder = Web(second_browser, engine)
        intruder.login("clerk")
        assert one.pending is not None
        stolen = second_browser.post(f"/runs/{one.run_id}/approve", follow_redirects=False,
                                     data={"csrf": token_for_one, "digest": one.pending.proposal_digest})
        assert stolen.status_code == 403
    assert "approval.granted" not in _events(engine, one.run_id) + _events(engine, other.run_id)


def test_a_post_the_browser_labels_cross_site_is_refused_even_with_a_valid_token(web: Web, engine: Engine) -> None:
    run = start_payment(engine, 10)
    web.login("alice")
    page = web.client.get(f"/runs/{run.run_id}").text
    form = {"csrf": csrf_of(page, f"/runs/{run.run_id}/approve"),
            "digest": field_of(page, f"/runs/{run.run_id}/approve", "digest")}
    answer = web.client.post(f"/runs/{run.run_id}/approve", data=form, headers={"Sec-Fetch-Site": "cross-site"},
                             follow_redirects=False)
    assert answer.status_code == 403
    assert "approval.granted" not in _events(engine, run.run_id)


def test_rejecting_needs_a_reason_then_fails_the_run_under_the_principal(web: Web, engine: Engine) -> None:
    run = start_payment(engine, 5000)
    web.login("treasurer")
    empty = web.decide(run.run_id, "reject", text="   ")
    assert empty.status_code == 400
    assert engine.get(run.run_id).status == RunStatus.WAITING_FOR_APPROVAL
    answer = web.decide(run.run_id, "reject", text="duplicate invoice")
    assert answer.status_code == 303
    assert "Rejection recorded" in web.client.get(answer.headers["location"]).text
    denied = [e for e in engine.events(run.run_id) if e.event_type == "approval.denied"]
    assert [(e.actor_id, e.reason) for e in denied] == [("user:treasurer", "duplicate invoice")]
    assert engine.get(run.run_id).status == RunStatus.FAILED


def test_the_policy_refusal_is_shown_before_and_enforced_after_nothing_written(web: Web, engine: Engine) -> None:
    run = start_payment(engine, 5000, by="user:cfo")  # cfo started it: may not approve it
    web.login("cfo")
    page = web.client.get(f"/runs/{run.run_id}").text
    assert "may not approve: user:cfo started this run" in page
    before = _events(engine, run.run_id)
    answer = web.decide(run.run_id, text="mine")
    assert answer.status_code == 403
    assert "does not let you decide" in answer.text
    assert _events(engine, run.run_id) == before


# -- escaping and headers ----------------------------------------------------------------

HOSTILE = '<script>document.title="pwned"</script>'
IMG = "<img src=x onerror=alert(1)>"
STYLE = "</pre><style>body{display:none}</style>"


def _assert_inert(html: str) -> None:
    for raw in (HOSTILE, IMG, STYLE, "<script", "<img", "<style"):
        assert raw not in html, f"unescaped {raw!r} in the page"
    assert "&lt;script&gt;" in html


def test_hostile_actor_ids_comments_and_agent_output_are_escaped_on_every_page(web: Web, engine: Engine) -> None:
    run = start_payment(engine, 10, note=f"{HOSTILE} {IMG} {STYLE}", by=HOSTILE.replace(" ", ""))
    web.login("alice")
    for path in ("/inbox", f"/runs/{run.run_id}", f"/audit?run={run.run_id}"):
        page = web.client.get(path)
        assert page.status_code == 200, path
        _assert_inert(page.text)
    assert web.decide(run.run_id, text=f"{HOSTILE}\n{IMG}").status_code == 303
    done = web.client.get(f"/runs/{run.run_id}").text
    _assert_inert(done)
    assert "&lt;img src=x onerror=alert(1)&gt;" in done
    missing = web.client.get(f"/runs/{IMG}")
    assert missing.status_code == 404
    assert "<img" not in missing.text and "&lt;img src=x" in missing.text


def test_control_and_bidi_characters_show_as_visible_escapes_and_line_breaks_stay(web: Web, engine: Engine) -> None:
    # An actor id with control characters no longer reaches the ledger (identity.py refuses it).
    with pytest.raises(InvalidActorId):
        start_payment(engine, 10, by="user:mallory\r\x1b[2Kalice")
    run = start_payment(engine, 10, note="pay mallory\u202eecilA\u200b", by="user:mallory")
    web.login("alice")
    assert web.decide(run.run_id, text="line one\r\nline two\u202e").status_code == 303
    page = web.client.get(f"/runs/{run.run_id}").text
    for raw in ("\u202e", "\u200b", "\x1b", "\r"):
        assert raw not in page, repr(raw)
    assert "pay mallory\\u202eecilA\\u200b" in page
    assert "line one\nline two\\u202e" in page  # the browser's CRLF recorded as a newline, shown as one
    granted = [e.reason for e in engine.events(run.run_id) if e.event_type == "approval.granted"]
    assert granted == ["line one\nline two\u202e"]  # the ledger keeps the exact text


def test_every_response_forbids_scripts_inline_styles_and_framing(web: Web, engine: Engine) -> None:
    run = start_payment(engine, 10)
    web.login("alice")
    for path in ("/inbox", f"/runs/{run.run_id}", "/audit", "/ledger", "/runs/nope", "/api/inbox",
                 "/static/style.css", "/login"):
        answer = web.client.get(path)
        csp = answer.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "style-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "script-src" not in csp and "unsafe-inline" not in csp, path
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["cache-control"] == "no-store"
    pages = [web.client.get(p).text for p in ("/inbox", f"/runs/{run.run_id}", "/audit", "/ledger")]
    assert all("<script" not in p and " style=" not in p for p in pages)


def test_a_request_naming_another_host_is_refused_before_any_handler(web: Web, engine: Engine) -> None:
    web.login("alice")
    answer = web.client.get("/inbox", headers={"Host": "attacker.example"})
    assert answer.status_code == 400
    assert "host not allowed" in answer.text
    assert web.client.get("/inbox", headers={"Host": f"{HOST}:8000"}).status_code == 200


# -- the run page ------------------------------------------------------------------------


def test_the_timeline_shows_every_event_with_actor_model_tokens_cost_inputs_and_outputs(
    web: Web, engine: Engine
) -> None:
    run = start_payment(engine, 10, note="invoice 99")
    web.login("alice")
    web.decide(run.run_id, text="fine")
    page = web.client.get(f"/runs/{run.run_id}").text
    for event in engine.events(run.run_id):
        assert f'id="seq-{event.seq}"' in page
        assert f"{event.actor_type}:{event.actor_id}" in page
    assert "anthropic/claude-draft" in page and "prompt p7" in page
    assert "1200 in / 340 out" in page and "$0.005100" in page
    assert "&#34;note&#34;: &#34;invoice 99&#34;" in page  # an input blob, as indented JSON
    assert "human:alice@example.com" in page and "fine" in page


def test_a_redacted_body_is_shown_as_redacted_with_its_authorisation(web: Web, engine: Engine) -> None:
    run = start_payment(engine, 10, note="secret account 12345")
    drafted = next(e for e in engine.events(run.run_id) if e.event_type == "step.completed")
    redact_event(engine.db, drafted.event_id, by="dpo@example.com", reason="erasure request ER-7")
    web.login("alice")
    page = web.client.get(f"/runs/{run.run_id}").text
    section = page[page.index(f'id="seq-{drafted.seq}"'):]
    section = section[: section.index("</li>")]
    assert "redacted</span>" in section and "erasure request ER-7" in section and "dpo@example.com" in section
    # The bodies are gone (the reason column is hashed into the chain and stays, as audit redact documents).
    assert not any("secret account 12345" in body for body in re.findall(r"<pre[^>]*>(.*?)</pre>", section, re.S))
    first = engine.events(run.run_id)[0].seq
    assert "secret account 12345" in page[page.index(f'id="seq-{first}"'):page.index(f'id="seq-{drafted.seq}"')]


def test_the_graph_marks_the_runs_path_and_current_step(web: Web, engine: Engine) -> None:
    run = start_payment(engine, 10)
    web.login("alice")
    page = web.client.get(f"/runs/{run.run_id}").text
    graph = page[page.index('class="mermaid-source"'):]
    graph = graph[: graph.index("</pre>")]
    assert "<mark>  draft --&gt; review: to_review</mark>" in graph
    assert "<mark>  Class review s_active</mark>" in graph
    assert "<mark>  Class draft s_previous</mark>" in graph
    assert "  review --&gt; pay: to_pay\n" in graph  # not taken yet: not marked
    assert "%% path: draft → review" in graph
    web.decide(run.run_id, text="ok")
    done = web.client.get(f"/runs/{run.run_id}").text
    assert "<mark>  pay --&gt; DONE: finish</mark>" in done and "<mark>  Class DONE s_active</mark>" in done


def test_a_run_whose_machine_cannot_be_loaded_still_shows_its_timeline(
    engine: Engine, db_path: Path, users_file: Path
) -> None:
    machine = load_machine(MACHINE_REF)
    run = engine.start(machine, {"amount": 10, "note": "no ref"}, by="user:clerk")  # no ref recorded
    with Engine(db_path) as stranger, make_client(stranger, users_file) as client:  # machine not registered
        web = Web(client, stranger)
        web.login("alice")
        page = client.get(f"/runs/{run.run_id}")
    assert page.status_code == 200
    assert "cannot be loaded here" in page.text
    assert f'id="seq-{engine.events(run.run_id)[-1].seq}"' in page.text


# -- audit search and ledger --------------------------------------------------------------


def test_the_audit_page_filters_like_audit_log_and_pages_by_seq(web: Web, engine: Engine) -> None:
    runs = [start_payment(engine, 10 + i) for i in range(3)]
    web.login("alice")
    page = web.client.get("/audit", params={"event": "approval.*", "limit": "2"}).text
    rows = re.findall(r"<td>(\d+)</td><td>\d{4}-", page)
    requested = [e.seq for r in runs for e in engine.events(r.run_id) if e.event_type == "approval.requested"]
    assert [int(s) for s in rows] == requested[:2]
    next_link = re.search(r'href="/audit\?([^"]+)" id="next-page"', page)
    assert next_link
    second = web.client.get("/audit?" + next_link.group(1).replace("&amp;", "&")).text
    assert [int(s) for s in re.findall(r"<td>(\d+)</td><td>\d{4}-", second)] == requested[2:]
    assert 'id="next-page"' not in second
    bad = web.client.get("/audit", params={"since": "yesterday"})
    assert bad.status_code == 400 and "since" in bad.text


def test_the_ledger_page_shows_verify_status_and_the_last_anchor(web: Web, engine: Engine, db_path: Path) -> None:
    start_payment(engine, 10)
    anchor = take_anchor(engine.db, by="auditor@example.com")
    web.login("alice")
    page = web.client.get("/ledger").text
    assert f"OK up to seq {anchor.seq}" in page
    assert f"seq {anchor.seq} at {anchor.time}" in page and anchor.entry_hash in page
    assert "statecraft audit verify-export" in page
    # An insider edits a reason in place (dropping the guard trigger first): the page says FAILED.
    with sqlite3.connect(db_path) as raw:
        for (name,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            raw.execute(f'DROP TRIGGER "{name}"')
        raw.execute("UPDATE audit_event SET reason = 'edited' WHERE seq = 3")
    failed = web.client.get("/ledger").text
    assert "FAILED at seq 3" in failed
