"""The strict YAML reader: every problem names its field and line."""

from __future__ import annotations

import pytest

from octosts.adapters.policy_yaml import MAX_POLICY_BYTES, load_document, parse_trust_policy
from octosts.domain.errors import PolicyInvalid

GOOD = """\
issuer: https://token.actions.githubusercontent.com
subject_pattern: "repo:org/repo:ref:refs/heads/(main|develop)"
claim_pattern:
  job_workflow_ref: "org/repo/.github/workflows/release.yaml@.*"
  runner_environment: github-hosted
permissions:
  contents: write
  pull_requests: read
"""


def problems(text: str | bytes, kind: str = "repo") -> list[tuple[int | None, str, str]]:
    with pytest.raises(PolicyInvalid) as info:
        parse_trust_policy(text, kind=kind)  # type: ignore[arg-type]
    assert info.value.reason == "policy_invalid"
    return [(p.line, p.field, p.message) for p in info.value.problems]


def test_good_policy() -> None:
    policy = parse_trust_policy(GOOD, kind="repo")
    assert policy.subject_pattern is not None
    assert policy.subject_pattern.fullmatch("repo:org/repo:ref:refs/heads/main")
    assert not policy.subject_pattern.fullmatch("repo:org/repo:ref:refs/heads/main-evil")
    assert set(policy.claim_pattern) == {"job_workflow_ref", "runner_environment"}
    assert dict(policy.permissions) == {"contents": "write", "pull_requests": "read"}
    assert parse_trust_policy(GOOD.encode(), kind="repo") == policy
    assert parse_trust_policy(b"\xef\xbb\xbf" + GOOD.encode(), kind="repo") == policy


def test_org_policy_with_repositories() -> None:
    policy = parse_trust_policy(GOOD + "repositories: [a, b]\n", kind="org")
    assert policy.repositories == ("a", "b")
    found = problems(GOOD + "repositories: [a, b]\n", kind="repo")
    assert found == [(9, "repositories", found[0][2])]
    assert "organization" in found[0][2]


def test_problems_name_field_and_line() -> None:
    text = """\
issuer: https://a
subject: x
subject_pattern: y
claim_pattern:
  ref: "(a)\\\\1"
  ok: "(?=look)"
permissions:
  contents: admin
  workflow: write
unknown: 1
"""
    found = problems(text)
    by_field = {field: (line, message) for line, field, message in found}
    assert by_field["subject_pattern"][0] == 3
    assert by_field["claim_pattern.ref"][0] == 5
    assert "RE2" in by_field["claim_pattern.ref"][1]
    assert by_field["claim_pattern.ok"][0] == 6
    assert by_field["permissions.contents"][0] == 8
    assert by_field["permissions.workflow"][0] == 9
    assert "workflows" in by_field["permissions.workflow"][1]
    assert by_field["unknown"][0] == 10


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("issuer: a\nissuer: b\nsubject: s\npermissions: {contents: read}\n", 2, "issuer"),
        (
            "issuer: a\nsubject: s\npermissions:\n  contents: read\n  contents: write\n",
            5,
            "permissions.contents",
        ),
        (
            "issuer: a\nsubject: s\nclaim_pattern: {x: a, x: b}\npermissions: {contents: read}\n",
            3,
            "claim_pattern.x",
        ),
    ],
)
def test_duplicate_keys(text: str, line: int, field: str) -> None:
    found = problems(text)
    assert (line, field) in [(ln, f) for ln, f, _ in found], found
    assert any("duplicate" in m for _, _, m in found)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a: &x 1\nb: *x\n", "anchors"),
        ("a: *x\n", "aliases"),
        ("<<: {issuer: a}\n", "merge keys"),
        ("[" * 50 + "]" * 50, "nesting"),
        ("a:\n" + "".join("  " * i + "- \n" for i in range(1, 40)), "nesting"),
        ("issuer: a\n---\nissuer: b\n", "single document"),
        ("issuer: [unclosed\n", "invalid YAML"),
        ("issuer:\ta\n\tsubject: b\n", "invalid YAML"),
        ("issuer: !!python/object/apply:os.system [true]\n", "unsupported tag"),
        ("issuer: !!set {a: null}\n", "unsupported tag"),
        ("issuer: !custom x\n", "constructor"),
        ("issuer: a\x00\n", "character not allowed"),
        ("issuer: a\x1b\n", "character not allowed"),
        ("- a\n- b\n", "mapping"),
        ("just a string\n", "mapping"),
        ("", "mapping"),
        ("# only a comment\n", "mapping"),
        ("? [a, b]\n: c\n", "plain scalars"),
    ],
)
def test_refused_documents(text: str, fragment: str) -> None:
    found = problems(text)
    assert any(fragment in message for _, _, message in found), found


def test_billion_laughs_is_refused_at_its_first_anchor() -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    found = problems("\n".join(lines) + "\n")
    # Refused on line 1, before any alias is read: nothing was expanded.
    assert [(line, "anchors" in message) for line, _, message in found] == [(1, True)]


def test_size_cap() -> None:
    padding = "#" + "x" * 99 + "\n"
    just_under = GOOD + padding * ((MAX_POLICY_BYTES - len(GOOD)) // len(padding))
    assert len(just_under.encode()) <= MAX_POLICY_BYTES
    parse_trust_policy(just_under, kind="repo")
    found = problems(just_under + padding)
    assert "64 KiB" in found[0][2]


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        (b"issuer: \xff\n", 1),
        (b"issuer: a\nsubject: \xc3\x28\n", 2),
        ("\ud800".encode("utf-8", "surrogatepass"), 1),
    ],
)
def test_not_utf8(raw: bytes, line: int) -> None:
    assert problems(raw) == [(line, "", "the policy is not UTF-8 text")]


def test_wrong_types_from_yaml_scalars() -> None:
    text = """\
issuer: 123
subject: yes
audience: 2024-01-01
claim_pattern:
  ref: null
permissions:
  contents: ~
  issues: on
"""
    found = {field: (line, message) for line, field, message in problems(text)}
    assert found["issuer"] == (1, "must be a string, not a number")
    assert found["subject"] == (2, "must be a string, not a boolean")
    assert found["audience"][0] == 3
    assert found["claim_pattern.ref"] == (5, "must be a string, not null")
    assert found["permissions.contents"][0] == 7
    assert found["permissions.issues"][0] == 8


def test_unicode_values_and_escapes() -> None:
    text = GOOD.replace(
        "runner_environment: github-hosted", 'actor: "\\u00f1and\\u00fa|[[:alpha:]]+"'
    )
    policy = parse_trust_policy(text, kind="repo")
    assert policy.claim_pattern["actor"].fullmatch("ñandú")
    found = problems(GOOD.replace("github-hosted", '"\\ud800"'))
    assert found[0][:2] == (5, "claim_pattern.runner_environment")


def test_load_document_lines() -> None:
    document = load_document("a: 1\nb:\n  - x\n  - y\nc: {d: e}\n")
    assert document.data == {"a": 1, "b": ["x", "y"], "c": {"d": "e"}}
    assert dict(document.lines) == {
        "a": 1,
        "b": 2,
        "b[0]": 3,
        "b[1]": 4,
        "c": 5,
        "c.d": 5,
    }
    assert document.problems == ()


def test_integer_past_the_digit_limit_is_a_policy_problem_not_a_crash() -> None:
    from octosts.adapters.policy_yaml import load_document  # noqa: PLC0415
    from octosts.domain.errors import PolicyInvalid  # noqa: PLC0415

    with pytest.raises(PolicyInvalid, match="cannot be read"):
        load_document("subject: " + "9" * 5000 + "\n")
