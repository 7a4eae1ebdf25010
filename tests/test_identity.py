"""The one actor-id normaliser, the policy key, and what a process says about itself (statecraft/identity.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from statecraft import ApprovalPolicy, InvalidActorId, normalize_actor
from statecraft.identity import policy_key, process_identity

SAME_PERSON = [
    "Clerk@example.com",
    "  clerk@example.com  ",
    "CLERK@EXAMPLE.COM",
    "ｃｌｅｒｋ@example.com",  # full-width letters (NFKC)
]

REFUSED = {
    "clerk@example.com\x00": "control character",
    "cl\u200berk@example.com": "invisible format character",  # zero-width space
    "clerk\u200d@example.com": "invisible format character",  # zero-width joiner
    "\u202eclerk@example.com": "invisible format character",  # right-to-left override
    "clerk\u2066@example.com": "invisible format character",  # bidi isolate
    "\ufeffclerk@example.com": "invisible format character",  # BOM
    "clerk\n@example.com": "control character",
    "clerk\u2028@example.com": "line separator",
    "\u0441lerk@example.com": "mixes scripts",  # Cyrillic es among Latin letters
    "clerk@ex\u0430mple.com": "mixes scripts",  # Cyrillic a in the domain
    "cl\u03bfrk@example.com": "mixes scripts",  # Greek omicron
    "": "a decision needs a named actor",
    "   ": "a decision needs a named actor",
    "x" * 201: "longer than 200",
}


@pytest.mark.parametrize("spelling", SAME_PERSON)
def test_case_width_and_surrounding_spaces_normalise_to_one_id(spelling: str) -> None:
    assert normalize_actor(spelling) == "clerk@example.com"


@pytest.mark.parametrize(("spelling", "why"), sorted(REFUSED.items()))
def test_control_invisible_and_mixed_script_ids_are_refused_not_stripped(spelling: str, why: str) -> None:
    with pytest.raises(InvalidActorId, match=why) as info:
        normalize_actor(spelling)
    assert "\n" not in str(info.value)  # one line, the id escaped
    assert info.value.actor == ascii(spelling)


def test_ids_in_one_script_or_in_a_real_writing_system_are_kept() -> None:
    assert normalize_actor("Müller@firma.de") == "müller@firma.de"
    assert normalize_actor("Иван@пример.рф") == "иван@пример.рф"
    assert normalize_actor("山田たろう@example.jp") == "山田たろう@example.jp"
    assert normalize_actor("Jane   Doe") == "jane doe"
    assert normalize_actor("svc:support-api") == "svc:support-api"


def test_a_non_string_id_is_refused() -> None:
    with pytest.raises(InvalidActorId, match="is a string, not int"):
        normalize_actor(42)


def test_normalising_is_idempotent() -> None:
    for spelling in [*SAME_PERSON, "Müller@firma.de", "user:Clerk+Tag"]:
        once = normalize_actor(spelling)
        assert normalize_actor(once) == once


def test_the_policy_key_folds_tags_and_look_alikes_of_the_same_person() -> None:
    clerk = policy_key("clerk@example.com")
    assert policy_key("clerk+invoices@example.com") == clerk
    assert policy_key("user:clerk+2") == policy_key("user:clerk")
    # A whole-script look-alike passes the script rule, but not the key.
    whole_cyrillic = "\u0430\u04cf\u0456\u0441\u0435"  # а ӏ і с е
    assert normalize_actor(whole_cyrillic) == whole_cyrillic
    assert policy_key(whole_cyrillic) == policy_key("alice")
    assert policy_key("cl\u00e9rk@example.com") == clerk  # an accent is not another person
    assert policy_key("bob") != policy_key("rob")


def test_refusing_rules_compare_policy_keys_but_group_membership_is_exact() -> None:
    policy = ApprovalPolicy(required=1, group={"CFO@example.com", "\u0430\u04cf\u0456\u0441\u0435"},
                            excluded={"Submitter@example.com"})
    assert policy.group == frozenset({"cfo@example.com", "\u0430\u04cf\u0456\u0441\u0435"})
    assert policy.excluded == frozenset({"submitter@example.com"})
    refuse = lambda by, **kw: policy.refusal(by, approved_by=kw.get("approved", ()),  # noqa: E731
                                              started_by=kw.get("started"), requested_by=None)
    assert refuse("cfo@example.com") is None
    assert "not in the approver group" in (refuse("cfo+x@example.com") or "")  # an allow-list: exact
    assert "started this run (as cfo+x@example.com)" in (refuse("CFO@example.com", started="cfo+x@example.com") or "")
    assert "already approved" in (refuse("Cfo@Example.com", approved=("cfo@example.com",)) or "")
    # A group member whose id looks like someone who must not approve is refused.
    assert "started this run" in (refuse("\u0430\u04cf\u0456\u0441\u0435", started="alice") or "")


def test_a_policy_with_an_invalid_id_fails_when_it_is_built() -> None:
    with pytest.raises(ValueError, match="ApprovalPolicy.group: .*control character"):
        ApprovalPolicy(group={"cfo\x00@example.com"})
    with pytest.raises(ValueError, match="a collection of actor ids, not one string"):
        ApprovalPolicy(excluded="submitter@example.com")


def test_the_os_account_comes_from_the_effective_uid_not_from_user_variables() -> None:
    import pwd

    real = pwd.getpwuid(os.geteuid()).pw_name
    code = "import json; from statecraft.identity import process_identity as p; print(json.dumps(p().describe()))"
    env = {**os.environ, "USER": "mallory", "LOGNAME": "mallory", "USERNAME": "mallory"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    recorded = json.loads(out.stdout)
    assert (recorded["os_user"], recorded["os_uid"], recorded["host"]) == (real, os.geteuid(), socket.gethostname())
    assert process_identity().describe() == {**recorded, "principal": None}
