"""Service settings: each declared once, all validated at once at start-up.

Every setting is one field of ``Settings``, declared with ``setting(...)`` or
``required(...)``: its environment variable, default, parser and checks. There
is no other list of settings: ``load``, the config file's known keys and the
README table's test all read these declarations. Adding a setting is adding a
field (and its README row).

``load(environ, path)`` reads the environment variables and, optionally, a YAML
file whose keys are the same names in lower case (``sts_domain: ...``); the
environment wins. It parses and checks every setting, then the rules that span
several (``_RULES``: the issuer allowlist with the insecure issuers, the
webhook's secrets; a rule stops at a setting that did not parse, whose own
problem says what is wrong), and reports every problem at once, each with
its variable's name, so a bad deployment fails fast with a clear message
instead of at the first exchange. Secret values (``secret=True``) never appear in a
message or a repr.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import yaml

from octosts.adapters.github_rest import DEFAULT_MAX_CONNECTIONS, base_url_problem
from octosts.adapters.kms import SIGNER_KINDS, SignerKind, kms_key_problem, missing_extra
from octosts.adapters.redis_state import MIN_HMAC_KEY_BYTES, url_problem
from octosts.adapters.signer import SignerConfig
from octosts.domain.issuers import AllowlistInvalid, compile_allowlist, issuer_entry_problem
from octosts.domain.layout import DEFAULT_ORG_POLICY_REPO
from octosts.domain.names import is_repo_name
from octosts.webhook.server import DEFAULT_MAX_BODY

T = TypeVar("T")
LogFormat = Literal["json", "console"]
CONFIG_FILE_VARIABLE = "OCTOSTS_CONFIG"
MAX_OIDC_LEEWAY_SECONDS = 300


class SettingsError(ValueError):
    """One or more settings are invalid; the message lists each of them."""


@dataclass(frozen=True, slots=True)
class Spec:
    """How one setting is read: the declaration behind a ``Settings`` field."""

    env: str
    parse: Callable[[str], Any]  # raises ValueError with a short message
    check: Callable[[Any], Iterable[str]] | None  # yields problems with a parsed value
    secret: bool
    required: bool
    file_env: str | None  # a variable naming a file to read the value from instead


_SPEC = "octosts.setting"


def setting(
    env: str,
    parse: Callable[[str], T],
    default: T,
    *,
    check: Callable[[T], Iterable[str]] | None = None,
    secret: bool = False,
    file_env: str | None = None,
) -> T:
    """Declare an optional setting (a ``Settings`` field default)."""
    spec = Spec(env, parse, check, secret, required=False, file_env=file_env)
    return field(default=default, repr=not secret, metadata={_SPEC: spec})


def required(
    env: str,
    parse: Callable[[str], T],
    *,
    check: Callable[[T], Iterable[str]] | None = None,
    secret: bool = False,
    file_env: str | None = None,
) -> T:
    """Declare a setting without a default: missing or empty is a problem."""
    spec = Spec(env, parse, check, secret, required=True, file_env=file_env)
    return cast("T", field(repr=not secret, metadata={_SPEC: spec}))


# -- parsers: str -> value, ValueError with a short message ---------------------------------


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


def _pattern_list(value: str) -> tuple[str, ...]:
    """Comma-separated RE2 patterns; commas inside ``{1,5}``, ``[a,b]`` or ``(...)`` stay.

    A top-level comma could only match a literal ',', which no valid issuer URL holds.
    """
    items: list[str] = []
    start = depth = i = 0
    while i < len(value):
        char = value[i]
        if char == "\\":
            i += 2
            continue
        if char == "[":
            i = _class_end(value, i)
            continue
        if char in "({":
            depth += 1
        elif char in ")}":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            items.append(value[start:i])
            start = i + 1
        i += 1
    items.append(value[start:])
    return tuple(item.strip() for item in items if item.strip())


def _class_end(value: str, i: int) -> int:
    """The index after the bracket class opening at ``i`` (``[]a]``, ``[^]]``, ``[[:alpha:]]``)."""
    i += 2 if value.startswith("[^", i) else 1
    if value.startswith("]", i):
        i += 1  # a leading ']' is a member
    while i < len(value):
        if value[i] == "\\":
            i += 2
        elif value.startswith("[:", i) and value.find(":]", i + 2) >= 0:
            i = value.find(":]", i + 2) + 2
        elif value[i] == "]":
            return i + 1
        else:
            i += 1
    return i


@dataclass(frozen=True, slots=True)
class GitHubAppEntry:
    """One GitHub App the service mints with (``Settings.apps``; docs/github-apps.md): its id,
    what signs its JWTs (its PEM key, or a KMS key), and whether it is the ``checks`` App,
    the one whose webhook this service receives (its check runs are made with it alone)."""

    app_id: int
    signer: SignerConfig
    checks: bool = False


@dataclass(frozen=True, slots=True)
class KeyNames:
    """What the key settings are called where a problem is reported."""

    pem: str
    signer: str
    kms_key: str


def key_source_problems(kind: SignerKind, pem: str, kms_key: str, names: KeyNames) -> Iterator[str]:
    """The private key with the ``pem`` signer; a valid KMS key (and no private key) with a KMS.

    One rule for the one App's settings and for each ``GITHUB_APPS`` entry.
    """
    if kind == "pem":
        if not pem:
            yield f"{names.pem}: required"
        if kms_key:
            yield f"{names.kms_key}: only used with {names.signer}=aws-kms or gcp-kms"
        return
    if pem:
        yield f"{names.pem}: must not be set with {names.signer}={kind} (the key is in the KMS)"
    if not kms_key:
        yield f"{names.kms_key}: required with {names.signer}={kind}"
    elif (problem := kms_key_problem(kind, kms_key)) is not None:
        yield f"{names.kms_key}: {problem}, got {kms_key!r}"


# The keys of one GITHUB_APPS entry.
_APP_KEYS = frozenset({"id", "private_key", "private_key_file", "signer", "kms_key", "checks"})
_ENTRY = KeyNames("private_key or private_key_file", "signer", "kms_key")


def _github_apps(value: str) -> tuple[GitHubAppEntry, ...]:
    """A YAML (or JSON) list of Apps: ``[{id: 1, private_key_file: /keys/1.pem}, ...]``.

    Every problem is reported at once; a key's text never is.
    """
    if not value.strip():
        return ()
    try:
        data = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"not valid YAML{where}") from None
    if not isinstance(data, list) or not data:
        raise ValueError("must be a list of Apps: [{id: N, private_key_file: FILE}, ...]")
    entries: list[GitHubAppEntry] = []
    problems: list[str] = []
    for index, item in enumerate(data):
        entry = _app_entry(item, f"[{index}]", problems)
        if entry is not None:
            entries.append(entry)
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(entries)


def _app_entry(item: object, where: str, problems: list[str]) -> GitHubAppEntry | None:
    if not isinstance(item, dict):
        problems.append(f"{where}: must be a mapping with id and private_key_file (or kms_key)")
        return None
    found: list[str] = []
    unknown = sorted(str(k) for k in item if k not in _APP_KEYS)
    if unknown:
        found.append(f"unknown key(s) {unknown}; known: {sorted(_APP_KEYS)}")
    app_id = item.get("id")
    if isinstance(app_id, bool) or not isinstance(app_id, int) or app_id < 1:
        found.append("id must be a positive integer")
    else:
        where = f"{where} (app {app_id})"
    checks = item.get("checks", False)
    if not isinstance(checks, bool):
        found.append("checks must be true or false")
    signer = _entry_signer(item, found)
    problems.extend(f"{where}: {problem}" for problem in found)
    if found or signer is None or not isinstance(app_id, int):
        return None
    return GitHubAppEntry(app_id, signer, checks)


def _entry_signer(item: dict[Any, Any], found: list[str]) -> SignerConfig | None:
    """The entry's signer (the same sources as the one App's), or None with ``found`` added to."""
    try:
        kind = _signer_kind(str(item.get("signer", "pem")))
    except ValueError as exc:
        found.append(f"signer {exc}")
        return None
    found.extend(_signer_installed(kind))
    pem = item.get("private_key")
    if pem is not None and item.get("private_key_file") is not None:
        found.append("give one of private_key and private_key_file, not both")
        return None
    if item.get("private_key_file") is not None:
        file = item["private_key_file"]
        try:
            pem = Path(str(file)).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            found.append(f"private_key_file: cannot read {file}: {type(exc).__name__}")
            return None
    kms_key = item.get("kms_key", "")
    if not isinstance(pem or "", str) or not isinstance(kms_key, str):
        found.append("private_key and kms_key must be text")
        return None
    before = len(found)
    found.extend(_pem_key(pem or ""))
    found.extend(key_source_problems(kind, pem or "", kms_key, _ENTRY))
    if len(found) > before:
        return None
    return SignerConfig(kind=kind, private_key_pem=pem or "", kms_key=kms_key)


def _log_format(value: str) -> LogFormat:
    text = value.strip()
    if text == "json":
        return "json"
    if text == "console":
        return "console"
    raise ValueError("must be json or console")


def _signer_kind(value: str) -> SignerKind:
    text = value.strip()
    for kind in SIGNER_KINDS:
        if text == kind:
            return kind
    raise ValueError("must be " + ", ".join(SIGNER_KINDS[:-1]) + " or " + SIGNER_KINDS[-1])


# -- checks: value -> problems ----------------------------------------------------------------


def _between(low: int, high: int) -> Callable[[int], Iterator[str]]:
    def check(value: int) -> Iterator[str]:
        if not low <= value <= high:
            yield f"must be between {low} and {high}"

    return check


def _positive_int(value: int) -> Iterator[str]:
    if value < 1:
        yield "must be a positive integer"


def _positive(value: float) -> Iterator[str]:
    if value <= 0:
        yield "must be positive"


def _host_port(value: str) -> Iterator[str]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        yield f"expected HOST:PORT, got {value!r}"


def _optional_host_port(value: str) -> Iterator[str]:
    if value:
        yield from _host_port(value)


def _github_url(value: str) -> Iterator[str]:
    problem = base_url_problem(value)  # the GitHub core's own rule, not a copy
    if problem is not None:
        yield problem


def _redis_url(value: str) -> Iterator[str]:
    problem = url_problem(value) if value else None  # the adapter's own rule
    if problem is not None:
        yield problem  # never the value: it may hold a password


def _redis_hmac_key(value: str) -> Iterator[str]:
    if value and len(value.encode()) < MIN_HMAC_KEY_BYTES:
        yield f"must be at least {MIN_HMAC_KEY_BYTES} bytes"


def _word(value: str) -> Iterator[str]:
    if not value or not all(c.isalnum() or c in "-_." for c in value):
        yield "must be a non-empty word of letters, digits, '-', '_' or '.'"


def _repo_name(value: str) -> Iterator[str]:
    if not is_repo_name(value):
        yield "must be a repository name"


def _optional_positive_int(value: int) -> Iterator[str]:
    if value < 0:
        yield "must be a positive integer"


def _one_checks_app(value: tuple[GitHubAppEntry, ...]) -> Iterator[str]:
    ids = [entry.app_id for entry in value]
    if len(ids) != len(set(ids)):
        yield "each App may be listed once"
    if sum(entry.checks for entry in value) > 1:
        yield "at most one App has checks: true (the App whose webhook this service receives)"


def _pem_key(value: str) -> Iterator[str]:
    if value and "PRIVATE KEY-----" not in value:
        yield "not a PEM private key"


def _signer_installed(value: SignerKind) -> Iterator[str]:
    hint = missing_extra(value)
    if hint is not None:
        yield hint


def _existing_file(value: str) -> Iterator[str]:
    if value and not Path(value).is_file():
        yield f"no such file {value!r}"


def _insecure_issuers(value: tuple[str, ...]) -> Iterator[str]:
    for issuer in value:
        problem = issuer_entry_problem(issuer, allow_insecure=True)
        if problem is not None:
            yield problem


def _log_level(value: str) -> Iterator[str]:
    if value.lower() not in {"debug", "info", "warning", "error"}:
        yield "must be debug, info, warning or error"


def _webhook_secrets(value: tuple[str, ...]) -> Iterator[str]:
    if any(len(secret) < 16 for secret in value):
        yield "each secret must be at least 16 characters"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the service (the README's configuration table)."""

    sts_domain: str = required("STS_DOMAIN", _str)
    # The one App; or, instead, GITHUB_APPS (the rule _app_key_source says what is required).
    github_app_id: int = setting("GITHUB_APP_ID", _int, 0, check=_optional_positive_int)
    # Required with the default signer; absent with a KMS one (checked by _app_key_source).
    github_app_private_key: str = setting(
        "GITHUB_APP_PRIVATE_KEY",
        str,
        "",
        check=_pem_key,
        secret=True,
        file_env="GITHUB_APP_PRIVATE_KEY_FILE",
    )
    # docs/kms.md: the App's key held by a KMS, which signs the App JWT (a few times an hour).
    github_app_signer: SignerKind = setting(
        "GITHUB_APP_SIGNER", _signer_kind, "pem", check=_signer_installed
    )
    github_app_kms_key: str = setting("GITHUB_APP_KMS_KEY", _str, "")
    # [fleet]: several Apps, each mint to the one with the most quota left (docs/github-apps.md).
    github_apps: tuple[GitHubAppEntry, ...] = setting(
        "GITHUB_APPS", _github_apps, (), check=_one_checks_app, secret=True
    )
    grpc_addr: str = setting("OCTOSTS_GRPC_ADDR", _str, "127.0.0.1:8080", check=_host_port)
    metrics_addr: str = setting("OCTOSTS_METRICS_ADDR", _str, "", check=_optional_host_port)
    github_base_url: str = setting(
        "GITHUB_BASE_URL", _str, "https://api.github.com", check=_github_url
    )
    org_policy_repo: str = setting(
        "ORG_POLICY_REPO", _str, DEFAULT_ORG_POLICY_REPO, check=_repo_name
    )
    insecure_issuers: tuple[str, ...] = setting(
        "OCTOSTS_INSECURE_ISSUERS", _list, (), check=_insecure_issuers
    )
    # Both checked with the insecure issuers by the issuer-trust rule below.
    issuer_allowlist: tuple[str, ...] = setting("OCTOSTS_ISSUER_ALLOWLIST", _list, ())
    issuer_patterns: tuple[str, ...] = setting("OCTOSTS_ISSUER_PATTERNS", _pattern_list, ())
    outbound_ca_file: str = setting("OCTOSTS_OUTBOUND_CA_FILE", _str, "", check=_existing_file)
    # Negative would refuse fresh tokens; past a few minutes, expired tokens stay usable.
    oidc_leeway_seconds: int = setting(
        "OCTOSTS_OIDC_LEEWAY_SECONDS", _int, 30, check=_between(0, MAX_OIDC_LEEWAY_SECONDS)
    )
    outbound_timeout_seconds: float = setting("OCTOSTS_OUTBOUND_TIMEOUT_SECONDS", _float, 5.0)
    # [resilience]: the GitHub connection pool per worker, and how long a call waits for it.
    github_max_connections: int = setting(
        "OCTOSTS_GITHUB_MAX_CONNECTIONS", _int, DEFAULT_MAX_CONNECTIONS, check=_between(1, 1000)
    )
    github_pool_wait_seconds: float = setting(
        "OCTOSTS_GITHUB_POOL_WAIT_SECONDS", _float, 0.25, check=_positive
    )
    policy_fresh_seconds: float = setting("OCTOSTS_POLICY_FRESH_SECONDS", _float, 10.0)
    policy_stale_seconds: float = setting("OCTOSTS_POLICY_STALE_SECONDS", _float, 3600.0)
    policy_missing_seconds: float = setting("OCTOSTS_POLICY_MISSING_SECONDS", _float, 30.0)
    installation_ttl_seconds: float = setting("OCTOSTS_INSTALLATION_TTL_SECONDS", _float, 3600.0)
    installation_missing_seconds: float = setting(
        "OCTOSTS_INSTALLATION_MISSING_SECONDS", _float, 300.0
    )
    cache_max_entries: int = setting("OCTOSTS_CACHE_MAX_ENTRIES", _int, 10_000, check=_positive_int)
    verbose_errors: bool = setting("OCTOSTS_VERBOSE_ERRORS", _bool, False)  # noqa: FBT003
    workers: int = setting("OCTOSTS_WORKERS", _int, 1, check=_between(1, 64))
    # [resilience] admission control: Exchange + Check calls one worker handles at once.
    max_concurrent_rpcs: int = setting(
        "OCTOSTS_MAX_CONCURRENT_RPCS", _int, 100, check=_between(1, 10_000)
    )
    shutdown_grace_seconds: float = setting("OCTOSTS_SHUTDOWN_GRACE_SECONDS", _float, 5.0)
    # [resilience]: how long a replica out of local resources (fds, ports) reports NOT_SERVING.
    local_fault_unready_seconds: float = setting(
        "OCTOSTS_LOCAL_FAULT_UNREADY_SECONDS", _float, 10.0
    )
    log_level: str = setting("OCTOSTS_LOG_LEVEL", _str, "info", check=_log_level)
    log_format: LogFormat = setting("OCTOSTS_LOG_FORMAT", _log_format, "json")
    audit_sink_url: str = setting("OCTOSTS_AUDIT_SINK_URL", _str, "")
    # [org-allowlist]: per-org trusted-token-issuers cache and the GitHub webhook.
    issuers_fresh_seconds: float = setting(
        "OCTOSTS_ISSUERS_FRESH_SECONDS", _float, 300.0, check=_positive
    )
    issuers_stale_seconds: float = setting("OCTOSTS_ISSUERS_STALE_SECONDS", _float, 3600.0)
    # [operator-kit]: the per-org permission ceiling file, cached like the issuers file.
    ceiling_fresh_seconds: float = setting(
        "OCTOSTS_CEILING_FRESH_SECONDS", _float, 300.0, check=_positive
    )
    ceiling_stale_seconds: float = setting("OCTOSTS_CEILING_STALE_SECONDS", _float, 3600.0)
    # [operator-kit]: lookups (installation, org files, policy) for tokens not verified yet,
    # per process and minute, for names (issuer, identity, scopes) no verified token used yet.
    unverified_lookups_per_minute: float = setting(
        "OCTOSTS_UNVERIFIED_LOOKUPS_PER_MINUTE", _float, 30.0, check=_positive
    )
    webhook_addr: str = setting("OCTOSTS_WEBHOOK_ADDR", _str, "", check=_optional_host_port)
    # Comma-separated: several secrets are accepted at once while rotating.
    webhook_secrets: tuple[str, ...] = setting(
        "OCTOSTS_WEBHOOK_SECRETS", _list, (), check=_webhook_secrets, secret=True
    )
    webhook_max_body_bytes: int = setting(
        "OCTOSTS_WEBHOOK_MAX_BODY_BYTES", _int, DEFAULT_MAX_BODY, check=_between(1024, 25 << 20)
    )
    # [fleet]: Redis shared by every replica and worker (docs/deploy.md); off when empty.
    redis_url: str = setting("OCTOSTS_REDIS_URL", _str, "", check=_redis_url, secret=True)
    redis_timeout_seconds: float = setting(
        "OCTOSTS_REDIS_TIMEOUT_SECONDS", _float, 0.5, check=_positive
    )
    redis_hmac_key: str = setting(
        "OCTOSTS_REDIS_HMAC_KEY", _str, "", check=_redis_hmac_key, secret=True
    )
    redis_prefix: str = setting("OCTOSTS_REDIS_PREFIX", _str, "octosts", check=_word)

    def apps(self) -> tuple[GitHubAppEntry, ...]:
        """The GitHub Apps to mint with: ``GITHUB_APPS``, or the one App of ``GITHUB_APP_ID``
        (whose webhook, if any, this service receives)."""
        if self.github_apps:
            if any(entry.checks for entry in self.github_apps):
                return self.github_apps
            first, *rest = self.github_apps
            return (dataclasses.replace(first, checks=True), *rest)
        signer = SignerConfig(
            kind=self.github_app_signer,
            private_key_pem=self.github_app_private_key,
            kms_key=self.github_app_kms_key,
        )
        return (GitHubAppEntry(self.github_app_id, signer, checks=True),)


# -- rules spanning several settings: parsed values by attribute -> problems ----------------


def _issuer_trust(values: Mapping[str, Any]) -> Iterator[str]:
    """The deployment allowlist, compiled exactly as the verifier will (``app.build_app``)."""
    try:
        compile_allowlist(
            values["issuer_allowlist"],
            values["issuer_patterns"],
            insecure_issuers=frozenset(values["insecure_issuers"]),
        )
    except AllowlistInvalid as exc:
        env = {"issuers": "OCTOSTS_ISSUER_ALLOWLIST", "issuer_patterns": "OCTOSTS_ISSUER_PATTERNS"}
        for problem in exc.problems:
            yield f"{env[problem.field]}: {problem.message}"


_ONE_APP = KeyNames(
    "GITHUB_APP_PRIVATE_KEY or GITHUB_APP_PRIVATE_KEY_FILE",
    "GITHUB_APP_SIGNER",
    "GITHUB_APP_KMS_KEY",
)


def _app_key_source(values: Mapping[str, Any]) -> Iterator[str]:
    """The one App (GITHUB_APP_ID, its signer and key), or GITHUB_APPS instead: not both."""
    if values["github_apps"]:
        one = {
            "GITHUB_APP_ID": values["github_app_id"],
            _ONE_APP.pem: values["github_app_private_key"],
            _ONE_APP.kms_key: values["github_app_kms_key"],
            _ONE_APP.signer: values["github_app_signer"] != "pem",
        }
        for name, value in one.items():
            if value:
                yield f"{name}: not used with GITHUB_APPS (list every App there, with its key)"
        return
    yield from key_source_problems(
        values["github_app_signer"],
        values["github_app_private_key"],
        values["github_app_kms_key"],
        _ONE_APP,
    )


def _app_id_required(values: Mapping[str, Any]) -> Iterator[str]:
    if not values["github_apps"] and not values["github_app_id"]:
        yield "GITHUB_APP_ID: required (or GITHUB_APPS)"


def _webhook_needs_secrets(values: Mapping[str, Any]) -> Iterator[str]:
    if values["webhook_addr"] and not values["webhook_secrets"]:
        yield "OCTOSTS_WEBHOOK_SECRETS: required when OCTOSTS_WEBHOOK_ADDR is set"


def _redis_key_needs_url(values: Mapping[str, Any]) -> Iterator[str]:
    if values["redis_hmac_key"] and not values["redis_url"]:
        yield "OCTOSTS_REDIS_HMAC_KEY: set without OCTOSTS_REDIS_URL"


_RULES: tuple[Callable[[Mapping[str, Any]], Iterable[str]], ...] = (
    _issuer_trust,
    _app_key_source,
    _app_id_required,
    _webhook_needs_secrets,
    _redis_key_needs_url,
)


class _Unparsed(Exception):
    """A rule read a setting that was set but did not parse (a signal inside load only)."""


class _Parsed(dict[str, Any]):
    """The values the rules read; a setting that did not parse raises _Unparsed (``_apply``)."""

    def __init__(self, values: Mapping[str, Any], unparsed: set[str]) -> None:
        super().__init__(values)
        self._unparsed = frozenset(unparsed)

    def __getitem__(self, name: str) -> Any:
        if name in self._unparsed:
            raise _Unparsed(name)
        return super().__getitem__(name)


def specs() -> dict[str, Spec]:
    """Every setting's declaration, by ``Settings`` attribute, in declaration order."""
    return {f.name: f.metadata[_SPEC] for f in fields(Settings)}


def variables() -> tuple[str, ...]:
    """Every recognised variable name (for docs and the config file check)."""
    declared = specs().values()
    files = tuple(s.file_env for s in declared if s.file_env is not None)
    return (*(s.env for s in declared), *files, CONFIG_FILE_VARIABLE)


def parse_setting(attribute: str, text: str) -> Any:
    """One setting (a ``Settings`` attribute) from ``text``, parsed and checked as ``load``
    does it (for tools that must agree with the service, e.g. the Envoy render scripts).

    Raises SettingsError naming the variable and the problem.
    """
    spec = specs()[attribute]
    problems: list[str] = []
    value = _read_one(spec, {spec.env: text}, problems)
    if value is not None and spec.check is not None:
        problems.extend(f"{spec.env}: {problem}" for problem in spec.check(value))
    if problems:
        raise SettingsError("; ".join(problems))
    return value


def load(environ: Mapping[str, str] | None = None, path: Path | None = None) -> Settings:
    """Build Settings from the environment (and an optional YAML file).

    Raises SettingsError listing every invalid or missing setting.
    """
    env = dict(os.environ if environ is None else environ)
    if path is None and env.get(CONFIG_FILE_VARIABLE):
        path = Path(env[CONFIG_FILE_VARIABLE])
    known = set(variables()) - {CONFIG_FILE_VARIABLE}
    raw = _read_file_values(path, known) if path is not None else {}
    raw.update({k: v for k, v in env.items() if k in known})

    problems: list[str] = []
    values: dict[str, Any] = {}
    unparsed: set[str] = set()
    defaults = {f.name: f.default for f in fields(Settings)}
    for attribute, spec in specs().items():
        before = len(problems)
        value = _read_one(spec, raw, problems)
        if len(problems) > before:
            unparsed.add(attribute)
        if value is not None:
            values[attribute] = value
        elif not spec.required:
            value = defaults[attribute]  # defaults are checked too: a bad one fails every load
        if spec.required and value in (None, ""):
            name = spec.env if spec.file_env is None else f"{spec.env} or {spec.file_env}"
            problems.append(f"{name}: required")
        elif spec.check is not None and value is not None:
            problems.extend(f"{spec.env}: {problem}" for problem in spec.check(value))
    checked = _Parsed(
        {name: values.get(name, default) for name, default in defaults.items()}, unparsed
    )
    for rule in _RULES:
        _apply(rule, checked, problems)
    if problems:
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(problems))
    return Settings(**values)


def _apply(
    rule: Callable[[Mapping[str, Any]], Iterable[str]], values: _Parsed, problems: list[str]
) -> None:
    """The rule's problems, up to a setting it reads that did not parse: that setting's own
    problem says what is wrong, and the rule, reading its default instead, would only add
    noise (GITHUB_APPS invalid is not GITHUB_APPS unset)."""
    try:
        for problem in rule(values):
            problems.append(problem)  # noqa: PERF402 -- those before _Unparsed are kept
    except _Unparsed:
        return


def _read_one(spec: Spec, raw: Mapping[str, str], problems: list[str]) -> object | None:
    """The parsed value of one setting; None when it is not set or does not parse."""
    if spec.env in raw:
        text = raw[spec.env]
    elif spec.file_env is not None and raw.get(spec.file_env):
        file = Path(raw[spec.file_env])
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{spec.file_env}: cannot read {file}: {type(exc).__name__}")
            return None
    else:
        return None
    try:
        value: object = spec.parse(text)
    except ValueError as exc:
        shown = "" if spec.secret else f" ({text!r})"
        problems.append(f"{spec.env}: invalid value{shown}: {exc}")
        return None
    return value


def _read_file_values(path: Path, known: set[str]) -> dict[str, str]:
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
    for key, value in data.items():
        name = str(key).upper()
        if name not in known:
            raise SettingsError(f"{path}: unknown setting {key!r}")
        if isinstance(value, list) and any(isinstance(v, dict) for v in value):
            values[name] = yaml.safe_dump(value)  # a list of mappings (GITHUB_APPS), as YAML
        elif isinstance(value, list):
            values[name] = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            values[name] = "true" if value else "false"
        else:
            values[name] = str(value)
    return values
