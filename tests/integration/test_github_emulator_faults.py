"""The emulator as a fault-injection tool, over real sockets: fault rules, the token ledger and
the call log, driven through ``/_emulator/*`` as a bench script or another process would."""

from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from octosts.adapters.signer import app_jwt
from octosts.cli.dev_github import CONTROL_HELP
from octosts.dev.github import FIRST_INSTALLATION_ID, GitHubEmulator
from octosts.dev.github.limits import KINDS, SPEC_FIELDS
from tests.emulator import APP_ID, make_emulator, signer
from tests.fakes import FakeClock

ORG_ID = FIRST_INSTALLATION_ID
LOOKUP = "/orgs/octo-org/installation"
MINT = f"/app/installations/{ORG_ID}/access_tokens"


@pytest.fixture
async def gh(emulator: GitHubEmulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emulator.url, timeout=5) as client:
        yield client


async def _app(clock: FakeClock) -> dict[str, str]:
    return {"Authorization": f"Bearer {await app_jwt(signer(), APP_ID, clock)}"}


async def _add(gh: httpx.AsyncClient, **spec: object) -> dict[str, object]:
    resp = await gh.post("/_emulator/faults", json=spec)
    assert resp.status_code == 201, resp.text
    rule: dict[str, object] = resp.json()
    return rule


async def _rules(gh: httpx.AsyncClient) -> list[dict[str, object]]:
    rules: list[dict[str, object]] = (await gh.get("/_emulator/faults")).json()["faults"]
    return rules


async def test_error_rule_by_prefix_method_and_times(gh, clock) -> None:
    auth = await _app(clock)
    rule = await _add(gh, kind="error", status=502, path_prefix="/orgs/", method="get", times=2)
    assert rule["kind"] == "error"
    assert rule["method"] == "GET"
    assert rule["times_left"] == 2
    # Another path, and another method on the same path, are not touched.
    assert (await gh.post(MINT, json={}, headers=auth)).status_code == 201
    assert (await gh.post(LOOKUP, headers=auth)).status_code == 404
    first = await gh.get(LOOKUP, headers=auth)
    assert first.status_code == 502
    assert first.json()["message"] == "Server Error"
    assert "x-ratelimit-remaining" in first.headers  # GitHub stamps error answers too
    [listed] = await _rules(gh)
    assert (listed["fired"], listed["times_left"]) == (1, 1)
    assert (await gh.get(LOOKUP, headers=auth)).status_code == 502
    assert await _rules(gh) == []  # used up
    assert (await gh.get(LOOKUP, headers=auth)).status_code == 200


async def test_rules_are_listed_removed_and_cleared(gh, clock) -> None:
    auth = await _app(clock)
    first = await _add(gh, status=500, path_prefix="/orgs/")
    second = await _add(gh, status=503)
    assert [r["id"] for r in await _rules(gh)] == [first["id"], second["id"]]
    # The first rule that matches answers: /orgs/ gets the 500, others the 503.
    assert (await gh.get(LOOKUP, headers=auth)).status_code == 500
    assert (await gh.post(MINT, json={}, headers=auth)).status_code == 503
    assert (await gh.delete(f"/_emulator/faults/{first['id']}")).status_code == 204
    assert (await gh.delete(f"/_emulator/faults/{first['id']}")).status_code == 404
    assert (await gh.get(LOOKUP, headers=auth)).status_code == 503
    assert (await gh.delete("/_emulator/faults")).status_code == 204
    assert (await gh.get(LOOKUP, headers=auth)).status_code == 200
    await _add(gh, status=500)
    assert (await gh.post("/_emulator/reset")).status_code == 204
    assert await _rules(gh) == []


async def test_rule_expires_after_its_seconds(gh, clock) -> None:
    auth = await _app(clock)
    rule = await _add(gh, status=500, seconds=30)
    assert rule["expires_in"] == 30
    assert (await gh.get(LOOKUP, headers=auth)).status_code == 500
    clock.advance(31)
    assert (await gh.get(LOOKUP, headers=auth)).status_code == 200
    assert await _rules(gh) == []


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ({"kind": "flood"}, "kind must be one of"),
        ({"status": 500, "tims": 2}, "unknown field(s) ['tims']"),
        ({"status": "500"}, "status must be an integer"),
        ({"status": 200}, "status must be between 400 and 599"),
        ({"status": 500, "rate": 2}, "rate must be between 0 and 1"),
        ({"status": 500, "times": 0}, "times must be at least 1"),
        ({"kind": "error", "reset_in": 5}, "reset_in is for primary_rate_limit"),
        ({"kind": "latency"}, "needs latency_ms"),
        ({"status": 500, "path_prefix": "orgs"}, "path_prefix must start with /"),
    ],
)
async def test_invalid_rules_are_refused_with_the_reason(gh, spec, complaint) -> None:
    resp = await gh.post("/_emulator/faults", json=spec)
    assert resp.status_code == 400
    assert complaint in resp.json()["message"]
    assert await _rules(gh) == []


async def test_not_json_is_refused(gh) -> None:
    for body in (b"{", b"[1]"):
        resp = await gh.post("/_emulator/faults", content=body)
        assert resp.status_code == 400
    assert (await gh.put("/_emulator/faults", content=b"{}")).status_code == 405


async def test_rate_fires_for_a_fraction_repeatably(tmp_path: Path, clock) -> None:
    async def run() -> list[int]:
        with make_emulator(tmp_path / "e", clock, seed=7, rate_limit=10_000) as emu:
            async with httpx.AsyncClient(base_url=emu.url, timeout=5) as client:
                rule = await _add(client, status=503, rate=0.25)
                auth = await _app(clock)
                statuses = [(await client.get(LOOKUP, headers=auth)).status_code for _ in range(80)]
                [listed] = await _rules(client)
                assert listed["fired"] == statuses.count(503)
                assert rule["times_left"] is None
                return statuses

    first = await run()
    assert set(first) == {200, 503}
    assert 5 <= first.count(503) <= 40  # a quarter of 80, give or take what a seed draws
    assert await run() == first  # the same seed, the same answers


async def test_secondary_rate_limit_with_and_without_retry_after(gh, clock) -> None:
    auth = await _app(clock)
    await _add(gh, kind="secondary_rate_limit", status=429, retry_after=42, times=1)
    limited = await gh.get(LOOKUP, headers=auth)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "42"
    assert "secondary rate limit" in limited.json()["message"]
    assert limited.headers["x-ratelimit-remaining"] != "0"  # not the primary limit
    await _add(gh, kind="secondary_rate_limit", times=1)
    bare = await gh.get(LOOKUP, headers=auth)
    assert bare.status_code == 403
    assert "retry-after" not in bare.headers  # "wait at least a minute", per GitHub's docs


async def test_primary_rate_limit_lasts_until_its_reset(gh, clock) -> None:
    auth = await _app(clock)
    rule = await _add(gh, kind="primary_rate_limit", reset_in=30, path_prefix="/app/")
    reset_at = math.ceil(clock.now() + 30)
    assert rule["reset_at"] == reset_at
    assert rule["expires_in"] == 30
    for _ in range(2):
        limited = await gh.post(MINT, json={}, headers=auth)
        assert limited.status_code == 403
        assert limited.headers["x-ratelimit-remaining"] == "0"
        assert limited.headers["x-ratelimit-reset"] == str(reset_at)
        assert "rate limit exceeded" in limited.json()["message"]
    assert (await gh.get(LOOKUP, headers=auth)).status_code == 200  # other paths: no limit
    clock.advance(30)
    assert (await gh.post(MINT, json={}, headers=auth)).status_code == 201


async def test_latency_rule_delays_matching_requests_only(gh, clock, emulator) -> None:
    auth = await _app(clock)
    slept: list[float] = []
    emulator.faults.sleep = slept.append
    await _add(gh, kind="latency", latency_ms=3000, path_prefix="/app/")
    assert (await gh.post(MINT, json={}, headers=auth)).status_code == 201
    assert (await gh.get(LOOKUP, headers=auth)).status_code == 200
    assert slept == [3.0]
    # A delayed error: the latency comes first, then the answer.
    await _add(gh, status=504, latency_ms=250, path_prefix="/orgs/", times=1)
    assert (await gh.get(LOOKUP, headers=auth)).status_code == 504
    assert slept == [3.0, 0.25]


async def test_disconnect_closes_the_connection_unanswered(gh, clock) -> None:
    auth = await _app(clock)
    await _add(gh, kind="disconnect", path_prefix="/orgs/", times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        await gh.get(LOOKUP, headers=auth)
    assert (await gh.get(LOOKUP, headers=auth)).status_code == 200
    calls = (await gh.get("/_emulator/calls")).json()
    assert [(c["path"], c["status"]) for c in calls] == [(LOOKUP, 0), (LOOKUP, 200)]


async def test_call_log_has_times_and_since(gh, clock) -> None:
    auth = await _app(clock)
    await gh.get(LOOKUP, headers=auth)
    before = clock.now()
    clock.advance(5)
    await gh.get("/orgs/nobody/installation", headers=auth)
    calls = (await gh.get("/_emulator/calls")).json()
    assert calls == [
        {
            "method": "GET",
            "path": LOOKUP,
            "status": 200,
            "auth": "app",
            "at": before,
            "app_id": APP_ID,
        },
        {
            "method": "GET",
            "path": "/orgs/nobody/installation",
            "status": 404,
            "auth": "app",
            "at": before + 5,
            "app_id": APP_ID,
        },
    ]
    recent = (await gh.get("/_emulator/calls", params={"since": before + 1})).json()
    assert [c["status"] for c in recent] == [404]
    assert (await gh.get("/_emulator/calls", params={"since": "soon"})).status_code == 400
    assert (await gh.post("/_emulator/reset")).status_code == 204
    assert (await gh.get("/_emulator/calls")).json() == []


async def test_token_ledger(gh, clock) -> None:
    auth = await _app(clock)
    held = []
    for body in (
        {"permissions": {"contents": "read"}, "repositories": ["demo"]},
        {"permissions": {"issues": "write"}},
        {"permissions": {"contents": "read"}},
    ):
        resp = await gh.post(MINT, json=body, headers=auth)
        assert resp.status_code == 201
        held.append(resp.json()["token"])
    revoke = await gh.delete("/installation/token", headers={"Authorization": f"token {held[1]}"})
    assert revoke.status_code == 204
    resp = await gh.get("/_emulator/tokens")
    assert not any(token in resp.text for token in held)  # hashes only, never a token
    ledger = resp.json()
    assert (ledger["minted"], ledger["revoked"], ledger["live"]) == (3, 1, 2)
    lines = ledger["tokens"]
    assert [line["id"] for line in lines] == [1, 2, 3]
    assert [line["token_sha256"] for line in lines] == [
        hashlib.sha256(t.encode()).hexdigest() for t in held
    ]
    assert [line["state"] for line in lines] == ["live", "revoked", "live"]
    assert lines[0]["permissions"] == {"contents": "read"}
    assert lines[0]["repositories"] == ["demo"]
    assert lines[1]["repositories"] is None  # all of the installation's
    assert lines[1]["revoked_at"] == clock.now()
    assert lines[0]["installation_id"] == ORG_ID
    assert lines[0]["owner"] == "octo-org"
    assert lines[0]["expires_at"] == lines[0]["created_at"] + 3600
    revoked = (await gh.get("/_emulator/tokens", params={"state": "revoked"})).json()
    assert [line["id"] for line in revoked["tokens"]] == [2]
    assert (await gh.get("/_emulator/tokens", params={"state": "gone"})).status_code == 400
    # The ledger outlives a reset (tokens stay valid); expiry shows in the state.
    await gh.post("/_emulator/reset")
    clock.advance(3601)
    states = [line["state"] for line in (await gh.get("/_emulator/tokens")).json()["tokens"]]
    assert states == ["expired", "revoked", "expired"]


def test_ledger_marks_evicted_tokens(tmp_path: Path, clock) -> None:
    emu = make_emulator(tmp_path, clock, max_tokens=2)
    for _ in range(3):
        emu.ledger.mint(ORG_ID, "octo-org", {"contents": "read"}, None, clock.now())
    assert [line["state"] for line in emu.tokens()] == ["evicted", "live", "live"]
    assert [line["id"] for line in emu.tokens("live")] == [2, 3]


def test_every_rule_field_and_kind_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "github-emulator.md").read_text()
    table = {line.split("|")[1].strip().strip("`") for line in doc.splitlines() if "| `" in line}
    assert set(SPEC_FIELDS) <= table
    for name in (*SPEC_FIELDS, *KINDS):
        assert f'"{name}"' in CONTROL_HELP, name
        assert f"`{name}`" in doc, name
