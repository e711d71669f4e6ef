from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from octosts.domain.errors import PolicyInvalid
from octosts.domain.issuers import compile_trusted_issuers
from octosts.settings import Settings, SettingsError, load, specs, variables
from tests.unit.test_slash_guard import REFUSED

README = Path(__file__).resolve().parents[2] / "README.md"

PEM = "-----BEGIN PRIVATE KEY-----\nMIIBVQ==\n-----END PRIVATE KEY-----\n"
BASE = {"STS_DOMAIN": "sts.example.com", "GITHUB_APP_ID": "42", "GITHUB_APP_PRIVATE_KEY": PEM}


def test_minimal_environment_gives_sane_defaults() -> None:
    settings = load(BASE)
    assert settings.sts_domain == "sts.example.com"
    assert settings.github_app_id == 42
    assert settings.github_base_url == "https://api.github.com"
    assert settings.org_policy_repo == ".github"
    assert settings.policy_fresh_seconds == 10
    assert settings.workers == 1
    assert not settings.verbose_errors


def test_private_key_never_appears_in_repr_or_errors() -> None:
    assert "PRIVATE KEY" not in repr(load(BASE))
    with pytest.raises(SettingsError) as info:
        load({**BASE, "GITHUB_APP_PRIVATE_KEY": "not-a-pem-secret", "GITHUB_APP_ID": "x"})
    assert "not-a-pem-secret" not in str(info.value)
    assert "GITHUB_APP_PRIVATE_KEY: not a PEM private key" in str(info.value)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(SettingsError) as info:
        load(
            {
                "GITHUB_APP_ID": "abc",
                "OCTOSTS_WORKERS": "0",
                "GITHUB_BASE_URL": "http://github.example.com",
                "OCTOSTS_GRPC_ADDR": "nope",
                "OCTOSTS_VERBOSE_ERRORS": "maybe",
                # the issuer settings are load-time problems too, reported with the rest
                "OCTOSTS_ISSUER_PATTERNS": "(unclosed",
                "OCTOSTS_INSECURE_ISSUERS": "not a url",
                "OCTOSTS_ISSUER_ALLOWLIST": "http://issuer.example",
                "OCTOSTS_OIDC_LEEWAY_SECONDS": "-5",
            }
        )
    text = str(info.value)
    for expected in (
        "STS_DOMAIN: required",
        "GITHUB_APP_ID: invalid value",
        "GITHUB_APP_PRIVATE_KEY or GITHUB_APP_PRIVATE_KEY_FILE: required",
        "OCTOSTS_WORKERS",
        "GITHUB_BASE_URL: https is required",
        "OCTOSTS_GRPC_ADDR: expected HOST:PORT",
        "OCTOSTS_VERBOSE_ERRORS",
        'OCTOSTS_ISSUER_PATTERNS: pattern "(unclosed": invalid RE2 pattern',
        "OCTOSTS_INSECURE_ISSUERS: 'not a url': issuer URL rejected",
        "OCTOSTS_ISSUER_ALLOWLIST: 'http://issuer.example': issuer URL rejected",
        "OCTOSTS_OIDC_LEEWAY_SECONDS: must be between 0 and 300",
    ):
        assert expected in text


def test_plain_http_github_is_allowed_on_loopback_only() -> None:
    assert load({**BASE, "GITHUB_BASE_URL": "http://127.0.0.1:9000"}).github_base_url
    with pytest.raises(SettingsError):
        load({**BASE, "GITHUB_BASE_URL": "ftp://127.0.0.1"})


def test_key_file_and_yaml_file(tmp_path: Path) -> None:
    key = tmp_path / "app.pem"
    key.write_text(PEM)
    config = tmp_path / "octo-sts.yaml"
    config.write_text(
        "sts_domain: from-file.example\n"
        "github_app_id: 7\n"
        f"github_app_private_key_file: {key}\n"
        "octosts_insecure_issuers: [http://127.0.0.1:1, http://127.0.0.1:2]\n"
        "octosts_verbose_errors: true\n"
    )
    settings = load({"STS_DOMAIN": "env-wins.example"}, config)
    assert settings.sts_domain == "env-wins.example"
    assert settings.github_app_id == 7
    assert settings.github_app_private_key == PEM
    assert settings.insecure_issuers == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert settings.verbose_errors


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("- a\n- b\n", "top level must be a mapping"),
        ("bogus: 1\n", "unknown setting"),
        ("a: [", "not valid YAML"),
    ],
)
def test_bad_config_files(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(content)
    with pytest.raises(SettingsError, match=message):
        load(BASE, config)


def test_unreadable_key_file_is_named(tmp_path: Path) -> None:
    env = {k: v for k, v in BASE.items() if k != "GITHUB_APP_PRIVATE_KEY"}
    env["GITHUB_APP_PRIVATE_KEY_FILE"] = str(tmp_path / "missing.pem")
    with pytest.raises(SettingsError, match="GITHUB_APP_PRIVATE_KEY_FILE: cannot read"):
        load(env)


def test_unsafe_deployment_pattern_is_refused_at_load_like_the_org_file() -> None:
    """The deployment allowlist and the org file are one engine: the same guard refuses."""
    unsafe = r"https://[a-z.]+\.example\.com.*"
    with pytest.raises(SettingsError) as info:
        load({**BASE, "OCTOSTS_ISSUER_PATTERNS": unsafe})
    assert (
        f"OCTOSTS_ISSUER_PATTERNS: pattern \"{unsafe}\" may match '/' other than as a fixed literal"
        in str(info.value)
    )
    with pytest.raises(PolicyInvalid, match="may match '/'"):
        compile_trusted_issuers({"issuer_patterns": [unsafe]})


@pytest.mark.parametrize("pattern", REFUSED)
def test_every_pattern_the_guard_refuses_fails_load(pattern: str) -> None:
    with pytest.raises(SettingsError, match=r"OCTOSTS_ISSUER_PATTERNS: pattern .* may match '/'"):
        load({**BASE, "OCTOSTS_ISSUER_PATTERNS": pattern})


def test_patterns_with_commas_inside_stay_whole() -> None:
    env = {**BASE, "OCTOSTS_ISSUER_PATTERNS": r"https://a\.example/\d{1,5}, https://[a,b]\.x"}
    assert load(env).issuer_patterns == (r"https://a\.example/\d{1,5}", r"https://[a,b]\.x")


def test_allowlisted_http_issuer_needs_the_insecure_setting() -> None:
    issuer = "http://127.0.0.1:8780"
    env = {**BASE, "OCTOSTS_ISSUER_ALLOWLIST": issuer}
    with pytest.raises(SettingsError, match="scheme must be https"):
        load(env)
    assert load({**env, "OCTOSTS_INSECURE_ISSUERS": issuer}).issuer_allowlist == (issuer,)


def test_secret_values_never_appear_in_messages() -> None:
    secret = "do-not-show-me-0123456789"
    for name, spec in specs().items():
        if not spec.secret:
            continue
        for bad in (secret, f"{secret[:5]},{secret}"):  # malformed; too short a list item
            with pytest.raises(SettingsError) as info:
                load({**BASE, spec.env: bad, "STS_DOMAIN": ""})
            assert secret[:5] not in str(info.value), name
        assert secret not in repr(load(BASE)), name


def test_every_setting_has_one_declaration() -> None:
    declared = specs()
    envs = [spec.env for spec in declared.values()]
    assert len(envs) == len(set(envs))
    assert set(declared) == {f.name for f in dataclasses.fields(Settings)}
    assert load(BASE).cache_max_entries == 10_000  # the default is the one that is checked


def _readme_table() -> dict[str, str]:
    """Variable -> default cell, from the README's configuration table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Z0-9_*]+)`", cells[0])
        defaults = cells[1].split(" / ")
        for index, name in enumerate(names):
            rows[name] = defaults[index] if len(defaults) == len(names) else cells[1]
    return rows


def test_readme_configuration_table_matches_the_declarations() -> None:
    documented = _readme_table()
    documented.pop("OTEL_*")
    assert set(documented) == set(variables()) - {"OCTOSTS_CONFIG"}
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    for name, spec in specs().items():
        cell = documented[spec.env]
        shown = re.fullmatch(r"`([^`]*)`", cell)
        if shown is None:  # (none), (off), — (required)...
            assert spec.required or not defaults[name], f"{spec.env}: README says {cell}"
        else:
            assert spec.parse(shown.group(1)) == defaults[name], f"{spec.env}: README says {cell}"


# -- several GitHub Apps ([fleet], docs/github-apps.md) ------------------------------------------

ONE_APP = {"STS_DOMAIN": "sts.example.com"}


def test_one_app_is_the_checks_app() -> None:
    [entry] = load(BASE).apps()
    assert (entry.app_id, entry.signer.kind, entry.checks) == (42, "pem", True)
    assert entry.signer.private_key_pem == PEM


def test_several_apps_from_the_environment(tmp_path: Path) -> None:
    key = tmp_path / "2.pem"
    key.write_text(PEM)
    apps = (
        f"[{{id: 1, private_key: {json.dumps(PEM)}}},"
        f" {{id: 2, private_key_file: {key}, checks: true}}, {{id: 3, private_key_file: {key}}}]"
    )
    settings = load({**ONE_APP, "GITHUB_APPS": apps})
    assert [(e.app_id, e.signer.private_key_pem, e.checks) for e in settings.apps()] == [
        (1, PEM, False),
        (2, PEM, True),
        (3, PEM, False),
    ]
    assert "PRIVATE KEY" not in repr(settings)
    # Without checks: true, the first App's webhook is the one received.
    first = load({**ONE_APP, "GITHUB_APPS": f"[{{id: 5, private_key_file: {key}}}]"})
    assert [(e.app_id, e.checks) for e in first.apps()] == [(5, True)]


def test_several_apps_from_the_config_file(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_text(PEM)
    config = tmp_path / "octo-sts.yaml"
    config.write_text(
        "sts_domain: sts.example.com\n"
        "github_apps:\n"
        f"  - {{id: 11, private_key_file: {key}}}\n"
        f"  - id: 12\n    private_key_file: {key}\n    checks: true\n"
    )
    assert [(e.app_id, e.checks) for e in load({}, config).apps()] == [(11, False), (12, True)]


@pytest.mark.parametrize(
    ("env", "problems"),
    [
        (ONE_APP, ["GITHUB_APP_ID: required (or GITHUB_APPS)"]),
        (
            {**BASE, "GITHUB_APPS": f"[{{id: 1, private_key: {json.dumps(PEM)}}}]"},
            [
                "GITHUB_APP_ID: not used with GITHUB_APPS",
                "GITHUB_APP_PRIVATE_KEY or GITHUB_APP_PRIVATE_KEY_FILE: not used with GITHUB_APPS",
            ],
        ),
        (
            {**ONE_APP, "GITHUB_APPS": "[{id: 1, private_key: 'x'}]"},
            ["GITHUB_APPS: invalid value: [0] (app 1): not a PEM private key"],
        ),
        (
            {**ONE_APP, "GITHUB_APPS": "id: 1"},
            ["GITHUB_APPS: invalid value: must be a list of Apps"],
        ),
        (
            {**ONE_APP, "GITHUB_APPS": "[{id: 1, private_key: '"},
            ["GITHUB_APPS: invalid value: not valid YAML"],
        ),
        (
            {
                **ONE_APP,
                "GITHUB_APPS": "[{id: 0, private_key_file: /nonexistent/k.pem, colour: red},"
                " 7, {id: 2}, {id: 3, private_key: x, private_key_file: y, checks: maybe}]",
            },
            [
                "[0]: unknown key(s) ['colour']",
                "[0]: id must be a positive integer",
                "[0]: private_key_file: cannot read /nonexistent/k.pem: FileNotFoundError",
                "[1]: must be a mapping with id and private_key_file (or kms_key)",
                "[2] (app 2): private_key or private_key_file: required",
                "[3] (app 3): checks must be true or false",
                "[3] (app 3): give one of private_key and private_key_file, not both",
            ],
        ),
    ],
)
def test_bad_apps_are_reported_at_once(env: dict[str, str], problems: list[str]) -> None:
    with pytest.raises(SettingsError) as info:
        load(env)
    for problem in problems:
        assert problem in str(info.value)


def test_an_app_is_listed_once_and_one_receives_the_webhook() -> None:
    entry = f"{{id: 1, private_key: {json.dumps(PEM)}, checks: true}}"
    apps = f"[{entry}, {entry}]"
    with pytest.raises(SettingsError) as info:
        load({**ONE_APP, "GITHUB_APPS": apps})
    assert "GITHUB_APPS: each App may be listed once" in str(info.value)
    assert "GITHUB_APPS: at most one App has checks: true" in str(info.value)
    assert "PRIVATE KEY" not in str(info.value)


def test_an_invalid_apps_list_is_not_taken_for_no_list() -> None:
    """GITHUB_APPS set but bad: its problem alone, not the one App's settings as missing."""
    with pytest.raises(SettingsError) as info:
        load({**ONE_APP, "GITHUB_APPS": "[{id: 1, private_key: x}]"})
    assert str(info.value).splitlines()[1:] == [
        "  GITHUB_APPS: invalid value: [0] (app 1): not a PEM private key"
    ]
    # The same for the one App's key file: unreadable is its own problem, not "required".
    with pytest.raises(SettingsError) as info:
        load({**ONE_APP, "GITHUB_APP_ID": "7", "GITHUB_APP_PRIVATE_KEY_FILE": "/nonexistent/k"})
    assert str(info.value).splitlines()[1:] == [
        "  GITHUB_APP_PRIVATE_KEY_FILE: cannot read /nonexistent/k: FileNotFoundError"
    ]
