"""`octo-sts policy check|lint` and `octo-sts token decode` through octosts.cli.main."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import pytest

from octosts.cli import main
from octosts.dev.issuer import generate_key

ISS = "https://token.actions.githubusercontent.com"
POLICY = f"""\
issuer: {ISS}
subject_pattern: "repo:org/repo:ref:refs/heads/(main|develop)"
claim_pattern:
  ref_protected: "true"
permissions:
  contents: read
"""
CLAIMS = {
    "iss": ISS,
    "sub": "repo:org/repo:ref:refs/heads/main",
    "aud": "octo-sts.dev",
    "exp": 2_000_000_000,
    "iat": 1_700_000_000,
    "ref_protected": True,
}


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "p.sts.yaml").write_text(POLICY)
    (tmp_path / "c.json").write_text(json.dumps(CLAIMS))
    return tmp_path


def run_check(
    capsys: pytest.CaptureFixture[str], tmp: Path, *extra: str, policy: str = "p.sts.yaml"
) -> tuple[int, str, str]:
    code = main(
        ["policy", "check", "--policy", str(tmp / policy), "--claims", str(tmp / "c.json"), *extra]
    )
    out, err = capsys.readouterr()
    return code, out, err


def test_check_allowed(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_check(capsys, files, "--domain", "octo-sts.dev")
    assert code == 0, err
    assert json.loads(out) == {
        "allowed": True,
        "reason": "allowed",
        "detail": "token satisfies the trust policy",
    }
    assert out.count("\n") == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"sub": "repo:org/repo:ref:refs/heads/main-evil"}, "subject_mismatch"),
        ({"iss": "https://evil.example"}, "issuer_mismatch"),
        ({"aud": "other"}, "audience_mismatch"),
        ({"ref_protected": False}, "claim_mismatch"),
        ({"ref_protected": None}, "claim_not_string"),
        # token field syntax rules apply to the claims: a denial with their reason
        ({"sub": "repo:org/repo;rm -rf"}, "invalid_token_subject"),
        ({"aud": ["ok", "bad@aud"]}, "invalid_token_audience"),
        ({"iss": "http://insecure.example"}, "invalid_token_issuer"),
    ],
)
def test_check_denied(
    files: Path, capsys: pytest.CaptureFixture[str], change: dict[str, object], reason: str
) -> None:
    (files / "c.json").write_text(json.dumps(CLAIMS | change))
    code, out, _ = run_check(capsys, files, "--domain", "octo-sts.dev")
    result = json.loads(out)
    assert (code, result["allowed"], result["reason"]) == (1, False, reason)
    assert result["detail"]


def test_check_missing_claim(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    claims = dict(CLAIMS)
    del claims["ref_protected"]
    (files / "c.json").write_text(json.dumps(claims))
    code, out, _ = run_check(capsys, files, "--domain", "octo-sts.dev")
    assert (code, json.loads(out)["reason"]) == (1, "claim_missing")


def test_check_insecure_issuer_flag(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    iss = "http://127.0.0.1:8780"
    (files / "p.sts.yaml").write_text(POLICY.replace(ISS, iss))
    (files / "c.json").write_text(json.dumps(CLAIMS | {"iss": iss}))
    code, out, _ = run_check(capsys, files, "--domain", "octo-sts.dev")
    assert (code, json.loads(out)["reason"]) == (1, "invalid_token_issuer")
    code, out, _ = run_check(capsys, files, "--domain", "octo-sts.dev", "--allow-insecure-issuer")
    assert (code, json.loads(out)["reason"]) == (0, "allowed")


def test_check_requires_domain_without_audience(
    files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_check(capsys, files)
    assert (code, out) == (2, "")
    assert "--domain" in err
    (files / "p.sts.yaml").write_text(POLICY + "audience: octo-sts.dev\n")
    code, out, _ = run_check(capsys, files)
    assert (code, json.loads(out)["reason"]) == (0, "allowed")


def test_check_org_flag(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (files / "p.sts.yaml").write_text(POLICY + "repositories: [repo]\n")
    code, out, err = run_check(capsys, files, "--domain", "octo-sts.dev")
    assert (code, out) == (2, "")
    assert "p.sts.yaml:7: repositories:" in err
    code, out, _ = run_check(capsys, files, "--domain", "octo-sts.dev", "--org")
    assert code == 0


@pytest.mark.parametrize(
    ("policy", "fragment"),
    [
        (
            POLICY.replace("(main|develop)", "(a)\\\\1"),
            "p.sts.yaml:2: subject_pattern: invalid RE2",
        ),
        (POLICY + "permissions: {}\n", "p.sts.yaml:7: permissions: duplicate key"),
        (POLICY.replace("contents", "contnts"), "p.sts.yaml:6: permissions.contnts: unknown"),
        ("a: &x [1]\n", "p.sts.yaml:1: anchors"),
    ],
)
def test_check_invalid_policy(
    files: Path, capsys: pytest.CaptureFixture[str], policy: str, fragment: str
) -> None:
    (files / "p.sts.yaml").write_text(policy)
    code, out, err = run_check(capsys, files, "--domain", "octo-sts.dev")
    assert (code, out) == (2, "")
    assert fragment in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("claims", "fragment"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (b'{"exp": NaN}', "NaN"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 100_000, "JSON"),
        (b"", "invalid JSON"),
        (b" " * (300 * 1024), "larger than"),
    ],
)
def test_check_bad_claims(
    files: Path, capsys: pytest.CaptureFixture[str], claims: bytes, fragment: str
) -> None:
    (files / "c.json").write_bytes(claims)
    code, out, err = run_check(capsys, files, "--domain", "octo-sts.dev")
    assert (code, out) == (2, "")
    assert fragment in err
    assert "c.json" in err


def test_check_unreadable_files(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_check(capsys, files, "--domain", "d", policy="missing.yaml")
    assert code == 2
    assert "missing.yaml" in err
    (files / "dir").mkdir()
    code, _, err = run_check(capsys, files, "--domain", "d", policy="dir")
    assert code == 2
    assert "dir" in err
    assert "Traceback" not in err


def test_check_missing_arguments_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["policy", "check", "--policy", "x"])
    assert info.value.code == 2


# ---- lint ---------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_lint_valid_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write(tmp_path / "a.sts.yaml", POLICY)
    org = write(tmp_path / ".github/.github/chainguard/o.sts.yaml", POLICY + "repositories: [x]\n")
    assert main(["policy", "lint", str(a), str(org)]) == 0
    assert capsys.readouterr().out == ""


def test_lint_reports_one_line_per_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path / "good.sts.yaml", POLICY)
    bad = write(
        tmp_path / "bad.sts.yaml",
        POLICY.replace("contents: read", "contents: admin\n  workflows: read") + "extra: 1\n",
    )
    assert main(["policy", "lint", str(good), str(bad)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{bad}:6: permissions.contents: level 'admin' is not allowed; use one of read|write",
        f"{bad}:7: permissions.workflows: level 'read' is not allowed; use one of write",
        f"{bad}:8: extra: unknown field",
    ]


def test_lint_kind_from_location(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with_repos = POLICY + "repositories: [x]\n"
    org = write(tmp_path / ".github/.github/chainguard/o.sts.yaml", with_repos)
    repo = write(tmp_path / "demo/.github/chainguard/r.sts.yaml", with_repos)
    assert main(["policy", "lint", str(org)]) == 0
    assert main(["policy", "lint", str(repo)]) == 1
    assert main(["policy", "lint", "--kind", "org", str(repo)]) == 0
    assert main(["policy", "lint", "--kind", "trust", str(org)]) == 1
    capsys.readouterr()


def test_lint_issuers_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    issuers = write(tmp_path / "trusted-token-issuers.yaml", f"issuers: [{ISS}]\n")
    assert main(["policy", "lint", str(issuers)]) == 0
    bad = write(tmp_path / "bad.yaml", "mode: audit\nissuer_patterns: ['https://x[.]com.+']\n")
    assert main(["policy", "lint", "--kind", "issuers", str(bad)]) == 1
    assert f"{bad}:2: issuer_patterns[0]: pattern" in capsys.readouterr().out


def test_lint_issuers_http(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Loopback http:// issuers are valid (as in octo-sts); others need the switch offline."""
    loopback = write(
        tmp_path / "trusted-token-issuers.yaml",
        "issuers: [http://localhost, 'http://127.0.0.1:5556/dex', 'http://[::1]:8080']\n",
    )
    assert main(["policy", "lint", str(loopback)]) == 0
    internal = write(tmp_path / "i.yaml", "issuers: ['http://issuer.internal:8080']\n")
    assert main(["policy", "lint", "--kind", "issuers", str(internal)]) == 1
    out = capsys.readouterr().out
    assert f"{internal}:1: issuers[0]: 'http://issuer.internal:8080'" in out
    assert "OCTOSTS_INSECURE_ISSUERS" in out
    argv = ["policy", "lint", "--kind", "issuers", "--allow-insecure-issuer", str(internal)]
    assert main(argv) == 0
    # The switch is about http:// only: every other rule still applies.
    both = write(tmp_path / "b.yaml", "issuers: ['http://issuer.internal/a/../b']\n")
    assert main([*argv[:-1], str(both)]) == 1
    assert "'..'" in capsys.readouterr().out


def test_lint_missing_permissions_says_why_and_what_to_add(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write(tmp_path / "p.sts.yaml", POLICY.replace("permissions:\n  contents: read\n", ""))
    empty = write(tmp_path / "e.sts.yaml", POLICY.replace("\n  contents: read", " {}"))
    assert main(["policy", "lint", str(policy), str(empty)]) == 1
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith(f"{policy}: permissions: is required: without permissions GitHub")
    assert second.startswith(f"{empty}:5: permissions: must name at least one permission")
    for line in (first, second):
        assert "every permission the App installation holds" in line
        assert "'permissions: {contents: read}'" in line


def test_lint_unreadable_and_garbage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "g.sts.yaml"
    garbage.write_bytes(b"\x00\xff\x00")
    assert main(["policy", "lint", str(garbage)]) == 1
    assert f"{garbage}:1:" in capsys.readouterr().out
    assert main(["policy", "lint", str(tmp_path / "nope.yaml")]) == 1
    assert main(["policy", "lint", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "nope.yaml" in captured.out
    assert "Traceback" not in captured.out + captured.err


def test_claims_with_a_huge_integer_are_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    claims = tmp_path / "claims.json"
    claims.write_text('{"sub": ' + "9" * 5000 + "}")
    policy = tmp_path / "p.sts.yaml"
    policy.write_text("issuer: https://issuer.example\nsubject: a\npermissions: {contents: read}\n")
    args = ["policy", "check", "--policy", str(policy), "--claims", str(claims), "--domain", "x"]
    assert main(args) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_lint_escapes_control_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path / "b.sts.yaml", POLICY + '"evil\\e[31m": 1\n')
    assert main(["policy", "lint", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "evil" in out


def test_lint_checks_policies_against_a_ceiling_given_with_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ceiling = write(
        tmp_path / "org/.github/chainguard/permission-ceiling.yaml",
        "default: write\nelevated:\n  identities: [release]\n",
    )
    writer = POLICY.replace("contents: read", "contents: write\n  issues: read")
    ci = write(tmp_path / "demo/.github/chainguard/ci.sts.yaml", writer)
    release = write(tmp_path / "demo/.github/chainguard/release.sts.yaml", writer)
    assert main(["policy", "lint", str(ci), str(release)]) == 0  # no ceiling: valid
    assert main(["policy", "lint", str(ceiling), str(ci), str(release)]) == 1
    expected = (
        f"{ci}:6: permissions.contents: write is above what this identity may be granted "
        "(read): the organization's permission ceiling gives write and admin only to the "
        "identities it lists under elevated"
    )
    assert capsys.readouterr().out.splitlines() == [expected]
    assert main(["policy", "lint", "--ceiling", str(ceiling), str(release)]) == 0
    assert capsys.readouterr().out == ""


def test_lint_an_invalid_ceiling_or_two_of_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path / "permission-ceiling.yaml", "default: rw\n")
    policy = write(tmp_path / "ci.sts.yaml", POLICY)
    assert main(["policy", "lint", str(bad), str(policy)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{bad}:1: default: 'rw' is not a level: use one of none|read|write|admin"
    ]
    other = write(tmp_path / "x/permission-ceiling.yaml", "default: read\n")
    assert main(["policy", "lint", "--ceiling", str(other), str(bad)]) == 2
    assert "one permission ceiling" in capsys.readouterr().err


def test_lint_key_files_and_the_key_file_a_policy_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jwk = generate_key("ec", kid="e1").public_jwk(publish_alg=True)
    keys = write(tmp_path / "demo/.github/chainguard/k8s.jwks.json", json.dumps({"keys": [jwk]}))
    assert main(["policy", "lint", str(keys)]) == 0
    pinned = (
        "issuer: https://k8s.cluster.invalid\nsubject: system:serviceaccount:ci:deploy\n"
        "permissions: {contents: read}\njwks_file: .github/chainguard/k8s.jwks.json\n"
    )
    policy = write(tmp_path / "demo/.github/chainguard/k8s.sts.yaml", pinned)
    assert main(["policy", "lint", str(policy)]) == 0  # found from the checkout's root
    keys.write_text(json.dumps({"keys": [{**jwk, "d": "AQAB"}]}))
    assert main(["policy", "lint", str(keys), str(policy)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{keys}: keys[0].d: private key material")
    assert out[1].startswith(f"{policy}:4: jwks_file: .github/chainguard/k8s.jwks.json: keys[0].d")
    keys.unlink()
    assert main(["policy", "lint", str(policy)]) == 1
    assert capsys.readouterr().out.startswith(
        f"{policy}:4: jwks_file: .github/chainguard/k8s.jwks.json not found at "
    )


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_examples_lint(capsys: pytest.CaptureFixture[str]) -> None:
    policies = EXAMPLES / "policies"
    assert main(["policy", "lint", str(policies / "github-actions-main.sts.yaml")]) == 0
    assert main(["policy", "lint", "--kind", "org", str(policies / "org-deploy.sts.yaml")]) == 0
    assert main(["policy", "lint", str(policies / "invalid-typos.sts.yaml")]) == 1
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 5
    assert "did you mean 'pull_requests'" in out


@pytest.mark.parametrize(
    ("claims", "code", "reason"),
    [
        ("github-actions-main.json", 0, "allowed"),
        ("github-actions-evil-branch.json", 1, "subject_mismatch"),
    ],
)
def test_examples_check(
    capsys: pytest.CaptureFixture[str], claims: str, code: int, reason: str
) -> None:
    argv = [
        "policy",
        "check",
        "--policy",
        str(EXAMPLES / "policies" / "github-actions-main.sts.yaml"),
        "--claims",
        str(EXAMPLES / "claims" / claims),
        "--domain",
        "octo-sts.dev",
    ]
    assert main(argv) == code
    assert json.loads(capsys.readouterr().out)["reason"] == reason


# ---- token decode -------------------------------------------------------------


def b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


NOT_UTF8 = base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("=")
JWT = f"{b64({'alg': 'RS256', 'kid': 'k1'})}.{b64(CLAIMS)}.c2lnbmF0dXJl"


def test_decode_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "decode", JWT]) == 0
    out = capsys.readouterr().out
    assert out.startswith("UNVERIFIED")
    assert '"kid": "k1"' in out
    assert '"sub": "repo:org/repo:ref:refs/heads/main"' in out
    assert "exp: 2033-05-18T03:33:20Z" in out
    assert "iat: 2023-11-14T22:13:20Z" in out
    assert "c2lnbmF0dXJl" not in out  # the signature is never shown


def test_decode_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(f"Bearer {JWT}\n".encode()))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["token", "decode", "-"]) == 0
    assert "UNVERIFIED" in capsys.readouterr().out


def test_decode_marks_expired_and_odd_times(capsys: pytest.CaptureFixture[str]) -> None:
    claims = {"exp": 1_000_000_000, "nbf": "soon", "iat": 10**20}
    assert main(["token", "decode", f"{b64({'alg': 'none'})}.{b64(claims)}."]) == 0
    out = capsys.readouterr().out
    assert "exp: 2001-09-09T01:46:40Z (expired)" in out
    assert 'nbf: "soon" (not a number)' in out
    assert "(out of range)" in out


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("garbage", "3 dot-separated parts"),
        ("a.b.c.d.e", "JWE"),
        ("!!.??.x", "not base64url"),
        (f"{b64([1])}.{b64({})}.s", "JSON object"),
        (f"{b64({'alg': 'x'})}.{NOT_UTF8}.s", "not UTF-8"),
        (f"{b64({'alg': 'x'})}.bm90IGpzb24.s", "invalid JSON"),
        ("", "empty"),
        ("x" * 20_000, "larger than"),
    ],
)
def test_decode_garbage(raw: str, fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "decode", raw]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert fragment in err
    assert "Traceback" not in err
