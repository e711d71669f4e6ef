"""The GitHub App manifest (``ops.manifest``) and ``octo-sts setup manifest``."""

from __future__ import annotations

import html.parser
import json
import re
from pathlib import Path

import pytest

from octosts.adapters.github import POLICY_READ_PERMISSIONS
from octosts.cli import main
from octosts.ops.manifest import (
    EVENT_PERMISSIONS,
    AppSpec,
    ManifestError,
    build_manifest,
    creation_form,
    creation_url,
    default_webhook_url,
    grants_from_document,
    parse_grants,
    service_permissions,
)
from octosts.webhook.github_checks import CHECK_PERMISSIONS

URL = "https://sts.example.com"


def spec(**changes: object) -> AppSpec:
    fields: dict[str, object] = {
        "name": "octo-sts-example",
        "url": URL,
        "webhook_url": default_webhook_url(URL),
        "redirect_url": URL,
    }
    fields.update(changes)
    return AppSpec(**fields)  # type: ignore[arg-type]


def test_the_manifest_github_takes() -> None:
    manifest = build_manifest(spec(grants={"contents": "write", "issues": "write"}))
    assert manifest == {
        "name": "octo-sts-example",
        "url": URL,
        "description": manifest["description"],
        "public": False,
        "default_permissions": {
            "checks": "write",
            "contents": "write",
            "issues": "write",
            "metadata": "read",
            "pull_requests": "read",
        },
        "request_oauth_on_install": False,
        "hook_attributes": {"url": "https://sts.example.com/webhook", "active": True},
        "default_events": ["push", "pull_request", "check_suite"],
        "redirect_url": URL,
    }
    assert "callback_urls" not in manifest  # no user authorization at all
    assert json.loads(json.dumps(manifest)) == manifest


def test_the_service_asks_for_what_its_own_calls_need() -> None:
    # One home each: what the policy reader and the webhook's check runs mint with.
    with_hook = service_permissions(webhook=True)
    assert POLICY_READ_PERMISSIONS.items() <= with_hook.items()
    assert CHECK_PERMISSIONS.items() <= with_hook.items()
    assert with_hook["metadata"] == "read"
    assert service_permissions(webhook=False) == {"metadata": "read", "contents": "read"}


def test_every_event_has_the_permission_github_requires_for_it() -> None:
    manifest = build_manifest(spec())
    for event in manifest["default_events"]:
        assert EVENT_PERMISSIONS[event] in manifest["default_permissions"], event


def test_without_a_webhook_there_are_no_events_and_no_check_permissions() -> None:
    manifest = build_manifest(spec(webhook_url=None))
    assert "hook_attributes" not in manifest
    assert "default_events" not in manifest
    assert manifest["default_permissions"] == {"contents": "read", "metadata": "read"}


def test_grants_and_needs_merge_to_the_higher_level() -> None:
    manifest = build_manifest(spec(grants={"checks": "read", "contents": "write"}))
    assert manifest["default_permissions"]["checks"] == "write"  # the webhook needs write
    assert manifest["default_permissions"]["contents"] == "write"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"grants": {"issue": "write"}}, "did you mean 'issues'"),
        ({"grants": {"workflows": "read"}}, "level 'read' is not allowed; use one of write"),
        ({"name": "x" * 35}, "at most 34 characters"),
        ({"name": " padded"}, "name: must be printable"),
        ({"url": "sts.example.com"}, "expected an absolute http(s) URL"),
        ({"webhook_url": "http://sts.example.com/webhook"}, "must be https"),
        ({"redirect_url": "http://sts.example.com/"}, "must be https"),
        ({"url": "https://user:pw@sts.example.com"}, "must not carry credentials"),
    ],
)
def test_invalid_specs_are_refused_with_the_reason(
    changes: dict[str, object], expected: str
) -> None:
    with pytest.raises(ManifestError, match=re.escape(expected)):
        build_manifest(spec(**changes))


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ManifestError) as caught:
        build_manifest(spec(name="", url="ftp://x", grants={"nope": "read", "checks": "all"}))
    assert len(caught.value.problems) == 4


def test_plain_http_is_fine_on_loopback() -> None:
    manifest = build_manifest(
        spec(url="http://127.0.0.1:8443", webhook_url="http://localhost:8443/webhook")
    )
    assert manifest["hook_attributes"]["url"] == "http://localhost:8443/webhook"


def test_grants_parse_from_flags() -> None:
    assert parse_grants(["contents=write", " issues:read "]) == {
        "contents": "write",
        "issues": "read",
    }
    with pytest.raises(ManifestError, match="given twice"):
        parse_grants(["contents=write", "contents=read"])
    with pytest.raises(ManifestError, match="expected NAME=LEVEL"):
        parse_grants(["contents"])


def test_grants_from_a_mapping_or_a_trust_policy() -> None:
    assert grants_from_document({"issues": "write"}, "f") == {"issues": "write"}
    policy = {"issuer": "https://x", "subject": "s", "permissions": {"contents": "read"}}
    assert grants_from_document(policy, "f") == {"contents": "read"}
    with pytest.raises(ManifestError, match="expected a mapping"):
        grants_from_document(["contents"], "f")
    with pytest.raises(ManifestError, match="must be strings"):
        grants_from_document({"contents": 1}, "f")


def test_creation_urls() -> None:
    assert creation_url() == "https://github.com/settings/apps/new"
    assert (
        creation_url("https://ghe.example.com/", "octo-org")
        == "https://ghe.example.com/organizations/octo-org/settings/apps/new"
    )
    with pytest.raises(ManifestError, match="not a GitHub organization name"):
        creation_url(org="octo org/../x")
    with pytest.raises(ManifestError, match="must be https"):
        creation_url("http://github.example.com")


class _Form(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "form":
            self.action = values["action"] or ""
        if tag == "input":
            self.fields[values["name"] or ""] = values["value"] or ""


def test_the_form_posts_the_manifest_verbatim_whatever_it_holds() -> None:
    manifest = build_manifest(spec(name='<b>"x"&', description="</textarea><script>"))
    page = creation_form(manifest, creation_url(org="octo-org"), state="a b&c")
    assert "<script>" not in page
    form = _Form()
    form.feed(page)
    assert (
        form.action == "https://github.com/organizations/octo-org/settings/apps/new?state=a%20b%26c"
    )
    assert json.loads(form.fields["manifest"]) == manifest


# -- the CLI -------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["setup", "manifest", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_the_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "--name", "sts", "--url", URL, "--permission", "pull_requests=write"
    )
    assert (code, err) == (0, "")
    manifest = json.loads(out)
    assert manifest["default_permissions"]["pull_requests"] == "write"
    assert manifest["redirect_url"] == URL  # the code lands on the service's own page
    assert manifest["hook_attributes"]["url"] == f"{URL}/webhook"


def test_cli_reads_permissions_from_a_policy_and_flags_override(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = tmp_path / "deploy.sts.yaml"
    policy.write_text(
        "issuer: https://x\nsubject: s\npermissions:\n  issues: write\n  pages: write\n"
    )
    code, out, _ = run(
        capsys, "--name", "sts", "--url", URL, "--permissions-file", str(policy),
        "--permission", "pages=read", "--no-webhook",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out)["default_permissions"] == {
        "contents": "read",
        "issues": "write",
        "metadata": "read",
        "pages": "read",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--permission", "contens=write"], "did you mean 'contents'"),
        (["--org", "octo-org"], "go with --html"),
        (["--permissions-file", "/nonexistent/p.yaml"], "cannot read"),
        (["--html", "--org=-bad-"], "not a GitHub organization name"),
        (["--webhook-url", "http://sts.example.com/webhook"], "must be https"),
    ],
)
def test_cli_usage_errors_exit_2_with_the_reason(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run(capsys, "--name", "sts", "--url", URL, *args)
    assert (code, out) == (2, "")
    assert message in err
    assert "Traceback" not in err


def test_cli_refuses_a_permissions_file_that_is_not_yaml(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("issues: [write\n")
    code, _, err = run(capsys, "--name", "sts", "--url", URL, "--permissions-file", str(bad))
    assert code == 2
    assert "not YAML" in err


def test_cli_html_page(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "--name", "sts", "--url", URL, "--html", "--org", "octo-org",
        "--github-web", "https://ghe.example.com",
    )  # fmt: skip
    assert code == 0
    form = _Form()
    form.feed(out)
    assert form.action == "https://ghe.example.com/organizations/octo-org/settings/apps/new"
    assert json.loads(form.fields["manifest"])["name"] == "sts"
