from __future__ import annotations

from pathlib import Path

import pytest

from octosts.settings import SettingsError, load

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
