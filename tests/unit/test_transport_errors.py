from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest

from octosts.domain import errors
from octosts.domain.tokens import MAX_TOKEN_BYTES
from octosts.transport.errors import (
    EDGE_ANSWERS,
    TABLE,
    UNKNOWN_AUTHZ_MODE,
    denial,
    failure,
    status_code,
)
from octosts.transport.ext_authz import ExtAuthzOptions
from octosts.transport.metadata import bearer_token, request_id, user_agent
from octosts.transport.request_id import is_request_id, sanitise_request_id

C = grpc.StatusCode
INVALID_TOKEN = 'Bearer error="invalid_token"'


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidRequest("bad scope"), C.INVALID_ARGUMENT),
        (errors.TokenMalformed("x"), C.UNAUTHENTICATED),
        (errors.TokenExpired("x"), C.UNAUTHENTICATED),
        (errors.IssuerRejected("x"), C.UNAUTHENTICATED),
        (errors.TokenSignatureInvalid("x"), C.UNAUTHENTICATED),
        (errors.TokenClaimsInvalid("x"), C.UNAUTHENTICATED),
        (errors.NoInstallation("x"), C.PERMISSION_DENIED),
        (errors.PolicyNotFound("x"), C.PERMISSION_DENIED),
        (errors.PolicyInvalid("x"), C.PERMISSION_DENIED),
        (errors.PolicyDenied("x"), C.PERMISSION_DENIED),
        (errors.MintRejected("x"), C.PERMISSION_DENIED),
        (errors.RateLimited("x", retry_after=60), C.RESOURCE_EXHAUSTED),
        (errors.IssuerUnavailable("x"), C.UNAVAILABLE),
        (errors.GitHubUnavailable("x"), C.UNAVAILABLE),
        (errors.KmsUnavailable("x", reason=errors.KMS_THROTTLED), C.UNAVAILABLE),
        (errors.StsError("x"), C.INTERNAL),
        (RuntimeError("boom"), C.INTERNAL),
    ],
)
def test_every_error_family_has_one_status(exc: BaseException, code: grpc.StatusCode) -> None:
    assert status_code(exc) == code
    assert failure(exc, "rid").code == code


def test_permission_denied_hides_reason_and_detail_unless_verbose() -> None:
    exc = errors.PolicyDenied("subject_pattern 'repo:x:.*' no match", reason="subject_mismatch")
    quiet = failure(exc, "req-1")
    assert quiet.reason == "subject_mismatch"  # for logs and audit
    assert "subject_mismatch" not in quiet.message
    assert "repo:x" not in quiet.message
    assert "permission_denied" in quiet.message
    assert "req-1" in quiet.message
    loud = failure(exc, "req-1", verbose=True)
    assert "subject_mismatch" in loud.message
    assert "repo:x" in loud.message


def test_not_found_and_mismatch_read_the_same_to_callers() -> None:
    a = failure(errors.PolicyNotFound("no policy at o/r/p"), "r").message
    b = failure(errors.PolicyDenied("nope", reason="issuer_mismatch"), "r").message
    assert a == b


def test_authentication_detail_is_shown_and_foreign_errors_are_generic() -> None:
    shown = failure(errors.TokenExpired("token expired at 12:00"), "r").message
    assert "token expired at 12:00" in shown
    assert "token_expired" in shown
    hidden = failure(RuntimeError("secret internals"), "r")
    assert "secret internals" not in hidden.message
    assert hidden.reason == "internal"


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ((("authorization", "Bearer abc"),), "abc"),
        ((("authorization", "bearer abc"),), "abc"),
        ((("Authorization", "BEARER  abc "),), "abc"),
    ],
)
def test_bearer_token_accepts_case_insensitive_scheme(metadata: tuple, token: str) -> None:
    assert bearer_token(metadata) == token


@pytest.mark.parametrize(
    ("metadata", "error", "reason"),
    [
        ((), errors.TokenMalformed, "token_missing"),
        ((("authorization", "Basic abc"),), errors.TokenMalformed, "token_missing"),
        ((("authorization", "Bearer "),), errors.TokenMalformed, "token_missing"),
        ((("authorization", "Bearer " + "a" * 20_000),), errors.TokenMalformed, "token_too_large"),
        (
            (("authorization", "Bearer a"), ("authorization", "Bearer b")),
            errors.InvalidRequest,
            "invalid_request",
        ),
    ],
)
def test_bad_authorization_metadata(metadata: tuple, error: type, reason: str) -> None:
    with pytest.raises(error) as info:
        bearer_token(metadata)
    assert info.value.reason == reason


def test_request_id_is_kept_when_well_formed_and_replaced_otherwise() -> None:
    assert request_id((("x-request-id", "abc-123"),)) == "abc-123"
    fresh = request_id((("x-request-id", "bad id\n<script>"),))
    assert len(fresh) == 32
    assert fresh != request_id(())
    assert user_agent((("user-agent", "x" * 500),)) == "x" * 200


def test_issuer_rejections_do_not_say_why() -> None:
    shown = failure(errors.IssuerRejected("localhost resolves to a non-public address"), "r")
    assert shown.code == C.UNAUTHENTICATED
    assert "non-public" not in shown.message
    assert "invalid_token_issuer" in shown.message


GOOD_REQUEST_IDS = ["abc-123", "a", "A.b_c:d-e", "x" * 128, "0f8fad5b-d9cb-469f-a165-70867728950e"]
BAD_REQUEST_IDS = ["", "x" * 129, "bad id", "a\nb", "<script>", "a/b", "é", "a,b", None, 5, b"abc"]


@pytest.mark.parametrize("value", GOOD_REQUEST_IDS)
def test_good_request_ids_are_kept_everywhere(value: str) -> None:
    assert is_request_id(value)
    assert sanitise_request_id(value) == value
    assert request_id((("x-request-id", value),)) == value


@pytest.mark.parametrize("value", BAD_REQUEST_IDS)
def test_bad_request_ids_are_replaced_everywhere(value: object) -> None:
    assert not is_request_id(value)
    fresh = sanitise_request_id(value)
    assert fresh != value
    assert is_request_id(fresh)
    if isinstance(value, str):
        assert request_id((("x-request-id", value),)) != value


def test_one_token_cap_on_both_paths() -> None:
    largest = "a" * MAX_TOKEN_BYTES
    assert bearer_token((("authorization", f"Bearer {largest}"),)) == largest
    with pytest.raises(errors.TokenMalformed) as info:
        bearer_token((("authorization", f"Bearer {largest}a"),))
    assert info.value.reason == "token_too_large"
    assert ExtAuthzOptions().max_token_bytes == MAX_TOKEN_BYTES


# -- the one answer table ---------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"
# What Envoy's grpc_json_transcoder answers for each gRPC code (convert_grpc_status).
TRANSCODER_HTTP = {
    C.INVALID_ARGUMENT: 400,
    C.UNAUTHENTICATED: 401,
    C.PERMISSION_DENIED: 403,
    C.NOT_FOUND: 404,
    C.RESOURCE_EXHAUSTED: 429,
    C.INTERNAL: 500,
    C.UNAVAILABLE: 503,
    C.DEADLINE_EXCEEDED: 504,
}


def readme_error_tables() -> list[list[list[str]]]:
    """The tables of the README's "## Errors" section: rows of cells, header first."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("## Errors")
    tables: list[list[list[str]]] = []
    previous = ""
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append([c.strip().strip("`") for c in line.strip().strip("|").split("|")])
        previous = line
    for _header, separator, *_ in tables:
        assert set("".join(separator)) <= {"-", ":"}
    return tables


def readme_error_rows() -> set[tuple[str, int, str | None, bool]]:
    """(gRPC code, HTTP status, www-authenticate, Retry-After?) of each row of the README's
    first "## Errors" table, the transport table's."""
    header, _separator, *body = readme_error_tables()[0]
    assert header == ["Condition", "gRPC", "HTTP", "www-authenticate", "Retry-After"]
    rows = set()
    for _, code, http, www, retry_after in body:
        status = re.match(r"\d{3}\b", http)
        assert status is not None, http
        rows.add((code, int(status.group()), www or None, bool(retry_after)))
    return rows


def test_readme_errors_table_is_the_transport_table() -> None:
    ours = {
        (row.code.name, row.http_status, row.www_authenticate, row.retry_after) for row in TABLE
    }
    documented = readme_error_rows()
    assert ours - documented == set(), "rows of transport/errors.py missing from the README"
    assert documented - ours == set(), "README rows that transport/errors.py does not have"


def test_readme_edge_table_is_the_edge_answers() -> None:
    tables = readme_error_tables()
    assert len(tables) == 2
    header, _separator, *body = tables[1]
    assert header == ["Answered by the edge when", "Reason", "code", "HTTP", "Retry-After"]
    documented = {(reason, code, int(http), retry or None) for _, reason, code, http, retry in body}
    ours = {
        (
            a.reason,
            a.code.name,
            a.http_status,
            None if a.retry_after_seconds is None else str(a.retry_after_seconds),
        )
        for a in EDGE_ANSWERS
    }
    assert ours - documented == set(), "EDGE_ANSWERS missing from the README"
    assert documented - ours == set(), "README edge rows that EDGE_ANSWERS does not have"
    assert len(body) == len(EDGE_ANSWERS)


def test_http_status_column_is_what_the_gateway_answers() -> None:
    # Exchange's errors reach HTTP callers through the transcoder, which maps the gRPC code.
    for row in TABLE:
        assert row.http_status == TRANSCODER_HTTP[row.code], row


def test_no_row_is_hidden_by_an_earlier_one() -> None:
    for i, row in enumerate(TABLE):
        for earlier in TABLE[:i]:
            shadows = issubclass(row.error, earlier.error) and earlier.reason in (None, row.reason)
            assert not shadows, f"{earlier} hides {row}"
    assert TABLE[-1].error is errors.StsError


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            errors.TokenMalformed("no header", reason=errors.TOKEN_MISSING),
            (401, C.UNAUTHENTICATED, "missing bearer token (token_missing)", "Bearer"),
        ),
        (
            errors.TokenExpired("expired at 12:00"),
            (401, C.UNAUTHENTICATED, "invalid bearer token (token_expired)", INVALID_TOKEN),
        ),
        (
            errors.IssuerRejected("resolves to 10.0.0.1"),
            (401, C.UNAUTHENTICATED, "invalid bearer token (invalid_token_issuer)", INVALID_TOKEN),
        ),
        (
            errors.InvalidRequest("query parameter 'scope' given more than once", reason="x"),
            (400, C.INVALID_ARGUMENT, "query parameter 'scope' given more than once (x)", None),
        ),
        (
            errors.InvalidRequest(),
            (400, C.INVALID_ARGUMENT, "invalid request (invalid_request)", None),
        ),
        (
            errors.PermissionDenied("no such check", reason=UNKNOWN_AUTHZ_MODE),
            (403, C.PERMISSION_DENIED, "forbidden (unknown_authz_mode)", None),
        ),
        # The egress gateway's policy check: the family, never which policy check failed.
        (
            errors.PolicyDenied("subject does not match repo:a/b", reason="subject_mismatch"),
            (403, C.PERMISSION_DENIED, "forbidden (permission_denied)", None),
        ),
        (
            errors.PolicyNotFound("no file"),
            (403, C.PERMISSION_DENIED, "forbidden (permission_denied)", None),
        ),
        (
            errors.RateLimited("x", retry_after=59.2),
            (
                429,
                C.RESOURCE_EXHAUSTED,
                "GitHub rate limit reached, retry later (rate_limited)",
                None,
            ),
        ),
    ],
)
def test_edge_denials(
    exc: errors.StsError, expected: tuple[int, grpc.StatusCode, str, str | None]
) -> None:
    refused = denial(exc)
    assert refused is not None
    assert (
        refused.http_status,
        refused.code,
        refused.message,
        refused.www_authenticate,
    ) == expected
    assert refused.reason == exc.reason


def test_edge_denials_say_when_to_come_back_and_verbose_ones_say_why() -> None:
    limited = denial(errors.RateLimited("x", retry_after=59.2))
    assert limited is not None
    assert limited.retry_after == 60
    forbidden = denial(errors.PolicyDenied("x"))
    assert forbidden is not None
    assert forbidden.retry_after is None
    verbose = denial(
        errors.PolicyDenied("sub is repo:a/b", reason="subject_mismatch"), verbose=True
    )
    assert verbose is not None
    assert verbose.message == "forbidden (subject_mismatch): sub is repo:a/b"


@pytest.mark.parametrize(
    "exc",
    [
        errors.StsError("x"),
        # Not the caller's fault and maybe not every replica's: Envoy retries it elsewhere.
        errors.IssuerUnavailable("timeout"),
    ],
)
def test_what_the_edge_cannot_meet_is_a_fault_not_a_denial(exc: errors.StsError) -> None:
    # Check fails with the row's code; Envoy retries UNAVAILABLE, then answers 503 itself.
    assert denial(exc) is None
