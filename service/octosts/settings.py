"""Service settings: frozen, validated once at start-up.

``load(environ, path)`` reads environment variables (the README's table) and,
optionally, a YAML file whose keys are the same names in lower case
(``sts_domain: ...``); the environment wins over the file. Every problem is
reported at once with the variable's name, so a bad deployment fails fast
with a clear message instead of at the first exchange.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml


class SettingsError(ValueError):
    """One or more settings are invalid; the message lists each of them."""


DEFAULT_GRPC_ADDR = "127.0.0.1:8080"
DEFAULT_GITHUB_BASE_URL = "https://api.github.com"


@dataclass(frozen=True, slots=True)
class Settings:
    sts_domain: str
    github_app_id: int
    github_app_private_key: str = field(repr=False)
    grpc_addr: str = DEFAULT_GRPC_ADDR
    metrics_addr: str = ""
    github_base_url: str = DEFAULT_GITHUB_BASE_URL
    org_policy_repo: str = ".github"
    insecure_issuers: tuple[str, ...] = ()
    issuer_allowlist: tuple[str, ...] = ()
    issuer_patterns: tuple[str, ...] = ()
    outbound_ca_file: str = ""
    oidc_leeway_seconds: int = 30
    outbound_timeout_seconds: float = 5.0
    policy_fresh_seconds: float = 10.0
    policy_stale_seconds: float = 3600.0
    policy_missing_seconds: float = 30.0
    installation_ttl_seconds: float = 3600.0
    installation_missing_seconds: float = 300.0
    cache_max_entries: int = 10_000
    verbose_errors: bool = False
    workers: int = 1
    shutdown_grace_seconds: float = 5.0
    log_level: str = "info"
    log_format: Literal["json", "console"] = "json"
    audit_sink_url: str = ""
    # [org-allowlist]: per-org trusted-token-issuers cache and the GitHub webhook.
    issuers_fresh_seconds: float = 300.0
    issuers_stale_seconds: float = 3600.0
    webhook_addr: str = ""  # empty: no webhook listener
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    webhook_max_body_bytes: int = 1 << 20


# name -> (attribute, parser). Parsers raise ValueError with a short message.
def _str(value: str) -> str:
    return value.strip()


def _int(value: str) -> int:
    return int(value.strip())


def _float(value: str) -> float:
    result = float(value.strip())
    if result < 0:
        raise ValueError("must not be negative")
    return result


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be true or false")


def _list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


_VARIABLES: dict[str, tuple[str, Callable[[str], object]]] = {
    "STS_DOMAIN": ("sts_domain", _str),
    "GITHUB_APP_ID": ("github_app_id", _int),
    "GITHUB_APP_PRIVATE_KEY": ("github_app_private_key", str),
    "OCTOSTS_GRPC_ADDR": ("grpc_addr", _str),
    "OCTOSTS_METRICS_ADDR": ("metrics_addr", _str),
    "GITHUB_BASE_URL": ("github_base_url", _str),
    "ORG_POLICY_REPO": ("org_policy_repo", _str),
    "OCTOSTS_INSECURE_ISSUERS": ("insecure_issuers", _list),
    "OCTOSTS_ISSUER_ALLOWLIST": ("issuer_allowlist", _list),
    "OCTOSTS_ISSUER_PATTERNS": ("issuer_patterns", _list),
    "OCTOSTS_OUTBOUND_CA_FILE": ("outbound_ca_file", _str),
    "OCTOSTS_OIDC_LEEWAY_SECONDS": ("oidc_leeway_seconds", _int),
    "OCTOSTS_OUTBOUND_TIMEOUT_SECONDS": ("outbound_timeout_seconds", _float),
    "OCTOSTS_POLICY_FRESH_SECONDS": ("policy_fresh_seconds", _float),
    "OCTOSTS_POLICY_STALE_SECONDS": ("policy_stale_seconds", _float),
    "OCTOSTS_POLICY_MISSING_SECONDS": ("policy_missing_seconds", _float),
    "OCTOSTS_INSTALLATION_TTL_SECONDS": ("installation_ttl_seconds", _float),
    "OCTOSTS_INSTALLATION_MISSING_SECONDS": ("installation_missing_seconds", _float),
    "OCTOSTS_CACHE_MAX_ENTRIES": ("cache_max_entries", _int),
    "OCTOSTS_VERBOSE_ERRORS": ("verbose_errors", _bool),
    "OCTOSTS_WORKERS": ("workers", _int),
    "OCTOSTS_SHUTDOWN_GRACE_SECONDS": ("shutdown_grace_seconds", _float),
    "OCTOSTS_LOG_LEVEL": ("log_level", _str),
    "OCTOSTS_LOG_FORMAT": ("log_format", _str),
    "OCTOSTS_AUDIT_SINK_URL": ("audit_sink_url", _str),
    "OCTOSTS_ISSUERS_FRESH_SECONDS": ("issuers_fresh_seconds", _float),
    "OCTOSTS_ISSUERS_STALE_SECONDS": ("issuers_stale_seconds", _float),
    "OCTOSTS_WEBHOOK_ADDR": ("webhook_addr", _str),
    # Comma-separated: several secrets are accepted at once while rotating.
    "OCTOSTS_WEBHOOK_SECRETS": ("webhook_secrets", _list),
    "OCTOSTS_WEBHOOK_MAX_BODY_BYTES": ("webhook_max_body_bytes", _int),
}
# Read the PEM from this file when GITHUB_APP_PRIVATE_KEY is not given.
_KEY_FILE = "GITHUB_APP_PRIVATE_KEY_FILE"
CONFIG_FILE_VARIABLE = "OCTOSTS_CONFIG"


def _read_file_values(path: Path) -> dict[str, str]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read config file: {exc}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: top level must be a mapping of setting names to values")
    values: dict[str, str] = {}
    known = {*_VARIABLES, _KEY_FILE}
    for key, value in data.items():
        name = str(key).upper()
        if name not in known:
            raise SettingsError(f"{path}: unknown setting {key!r}")
        if isinstance(value, list):
            values[name] = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            values[name] = "true" if value else "false"
        else:
            values[name] = str(value)
    return values


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_addr(name: str, value: str, problems: list[str], *, optional: bool = False) -> None:
    if optional and not value:
        return
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        problems.append(f"{name}: expected HOST:PORT, got {value!r}")


def load(environ: Mapping[str, str] | None = None, path: Path | None = None) -> Settings:
    """Build Settings from the environment (and an optional YAML file).

    Raises SettingsError listing every invalid or missing setting.
    """
    env = dict(os.environ if environ is None else environ)
    if path is None and env.get(CONFIG_FILE_VARIABLE):
        path = Path(env[CONFIG_FILE_VARIABLE])
    raw = _read_file_values(path) if path is not None else {}
    raw.update({k: v for k, v in env.items() if k in _VARIABLES or k == _KEY_FILE})

    problems: list[str] = []
    kwargs = _parse_values(raw, problems)
    _load_key(raw, kwargs, problems)
    _validate_values(kwargs, problems)
    if problems:
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(problems))
    return Settings(**kwargs)  # type: ignore[arg-type]


def _parse_values(raw: Mapping[str, str], problems: list[str]) -> dict[str, object]:
    kwargs: dict[str, object] = {}
    for name, (attribute, parse) in _VARIABLES.items():
        if name not in raw:
            continue
        try:
            kwargs[attribute] = parse(raw[name])
        except ValueError as exc:
            # The private key never reaches a message, even a parse error.
            secret = attribute in {"github_app_private_key", "webhook_secrets"}
            shown = "" if secret else f" ({raw[name]!r})"
            problems.append(f"{name}: invalid value{shown}: {exc}")
    return kwargs


def _load_key(raw: Mapping[str, str], kwargs: dict[str, object], problems: list[str]) -> None:
    if "github_app_private_key" not in kwargs and raw.get(_KEY_FILE):
        key_path = Path(raw[_KEY_FILE])
        try:
            kwargs["github_app_private_key"] = key_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{_KEY_FILE}: cannot read {key_path}: {type(exc).__name__}")

    for name, attribute in (
        ("STS_DOMAIN", "sts_domain"),
        ("GITHUB_APP_ID", "github_app_id"),
        (f"GITHUB_APP_PRIVATE_KEY or {_KEY_FILE}", "github_app_private_key"),
    ):
        if not kwargs.get(attribute):
            problems.append(f"{name}: required")

    key = kwargs.get("github_app_private_key")
    if isinstance(key, str) and key and "PRIVATE KEY-----" not in key:
        problems.append("GITHUB_APP_PRIVATE_KEY: not a PEM private key")


def _validate_values(kwargs: Mapping[str, object], problems: list[str]) -> None:
    base = str(kwargs.get("github_base_url", DEFAULT_GITHUB_BASE_URL))
    parts = urlsplit(base)
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        problems.append(f"GITHUB_BASE_URL: expected an https URL, got {base!r}")
    elif parts.scheme == "http" and not _is_loopback_host(parts.hostname):
        problems.append("GITHUB_BASE_URL: https is required except for loopback addresses")
    app_id = kwargs.get("github_app_id")
    if isinstance(app_id, int) and app_id <= 0:
        problems.append("GITHUB_APP_ID: must be a positive integer")
    _check_addr("OCTOSTS_GRPC_ADDR", str(kwargs.get("grpc_addr", DEFAULT_GRPC_ADDR)), problems)
    metrics_addr = str(kwargs.get("metrics_addr", ""))
    _check_addr("OCTOSTS_METRICS_ADDR", metrics_addr, problems, optional=True)
    workers = kwargs.get("workers", 1)
    if not isinstance(workers, int) or not 1 <= workers <= 64:
        problems.append("OCTOSTS_WORKERS: must be between 1 and 64")
    if str(kwargs.get("log_format", "json")) not in {"json", "console"}:
        problems.append("OCTOSTS_LOG_FORMAT: must be json or console")
    level = str(kwargs.get("log_level", "info")).lower()
    if level not in {"debug", "info", "warning", "error"}:
        problems.append("OCTOSTS_LOG_LEVEL: must be debug, info, warning or error")
    max_entries = kwargs.get("cache_max_entries", 1)
    if not isinstance(max_entries, int) or max_entries < 1:
        problems.append("OCTOSTS_CACHE_MAX_ENTRIES: must be at least 1")
    ca_file = str(kwargs.get("outbound_ca_file", ""))
    if ca_file and not Path(ca_file).is_file():
        problems.append(f"OCTOSTS_OUTBOUND_CA_FILE: no such file {ca_file!r}")
    _validate_webhook(kwargs, problems)
    repo = str(kwargs.get("org_policy_repo", ".github"))
    if not repo or "/" in repo or repo in {".", ".."}:
        problems.append("ORG_POLICY_REPO: must be a repository name")


def _validate_webhook(kwargs: Mapping[str, object], problems: list[str]) -> None:
    addr = str(kwargs.get("webhook_addr", ""))
    _check_addr("OCTOSTS_WEBHOOK_ADDR", addr, problems, optional=True)
    secrets = kwargs.get("webhook_secrets", ())
    if addr and not secrets:
        problems.append("OCTOSTS_WEBHOOK_SECRETS: required when OCTOSTS_WEBHOOK_ADDR is set")
    if isinstance(secrets, tuple) and any(len(s) < 16 for s in secrets):
        problems.append("OCTOSTS_WEBHOOK_SECRETS: each secret must be at least 16 characters")
    max_body = kwargs.get("webhook_max_body_bytes", 1 << 20)
    if not isinstance(max_body, int) or not 1024 <= max_body <= 25 << 20:
        problems.append("OCTOSTS_WEBHOOK_MAX_BODY_BYTES: must be between 1024 and 26214400")
    if float(str(kwargs.get("issuers_fresh_seconds", 300.0))) <= 0:
        problems.append("OCTOSTS_ISSUERS_FRESH_SECONDS: must be positive")


def variables() -> tuple[str, ...]:
    """Every recognised variable name (for docs and the config file check)."""
    return (*_VARIABLES, _KEY_FILE, CONFIG_FILE_VARIABLE)
