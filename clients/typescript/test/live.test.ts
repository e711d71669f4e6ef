// Live tests against a running stack (Envoy over TLS in front of real replicas).
// tests/e2e/test_clients_live.py starts the stack, mints the tokens and runs this file with:
//   OCTO_STS_LIVE_ENDPOINT  https://localhost:PORT        OCTO_STS_LIVE_CA  PEM CA file
//   OCTO_STS_LIVE_SCOPE / OCTO_STS_LIVE_IDENTITY           a policy the tokens are checked against
//   OCTO_STS_LIVE_SCOPES    repositories (comma-separated) the allowed token may have in one token
//   OCTO_STS_LIVE_TOKEN     an OIDC token the policy allows
//   OCTO_STS_LIVE_DENIED_TOKEN  one it refuses
//   OCTO_STS_LIVE_GITHUB    GitHub API base (the emulator) to prove the minted token works
// Without them every test is skipped with that reason (never a silent pass: the driver checks).
import { test } from "node:test";
import assert from "node:assert/strict";
import { inspect } from "node:util";
import { exchange, OctoStsError } from "../src/index.js";

const env = process.env;
const live = {
  endpoint: env.OCTO_STS_LIVE_ENDPOINT ?? "",
  caFile: env.OCTO_STS_LIVE_CA ?? "",
  scope: env.OCTO_STS_LIVE_SCOPE ?? "",
  scopes: env.OCTO_STS_LIVE_SCOPES ?? "",
  identity: env.OCTO_STS_LIVE_IDENTITY ?? "",
  token: env.OCTO_STS_LIVE_TOKEN ?? "",
  denied: env.OCTO_STS_LIVE_DENIED_TOKEN ?? "",
  github: env.OCTO_STS_LIVE_GITHUB ?? "",
};
const skip = Object.values(live).some((v) => !v)
  ? "OCTO_STS_LIVE_* not set: run through tests/e2e/test_clients_live.py (it starts the stack)"
  : false;

async function githubAccepts(token: string, scope: string): Promise<number> {
  const res = await fetch(`${live.github}/repos/${scope}/contents/README.md`, {
    headers: { authorization: `Bearer ${token}` },
    signal: AbortSignal.timeout(10_000),
  });
  await res.arrayBuffer();
  return res.status;
}

for (const transport of ["grpc", "http"] as const) {
  test(`live ${transport}: allowed exchange returns a working GitHub token`, { skip }, async () => {
    const tok = await exchange({ ...live, transport, maxAttempts: 2 });
    assert.match(tok.token, /^ghs_/);
    assert.ok(tok.expiresAt.getTime() > Date.now());
    assert.ok(tok.repositories.length > 0);
    assert.ok(tok.requestId, "the gateway sends x-request-id");
    assert.ok(!inspect(tok).includes(tok.token));
    assert.equal(await githubAccepts(tok.token, live.scope), 200);
  });

  test(`live ${transport}: one token for several repositories`, { skip }, async () => {
    const scopes = live.scopes.split(",");
    const tok = await exchange({ ...live, scope: scopes, transport, maxAttempts: 2 });
    assert.deepEqual([...tok.repositories].sort(), scopes.map((s) => s.split("/")[1]).sort());
    for (const scope of scopes) assert.equal(await githubAccepts(tok.token, scope), 200);
  });

  test(`live ${transport}: denied exchange is PERMISSION_DENIED with reason and request id`, { skip }, async () => {
    await assert.rejects(exchange({ ...live, token: live.denied, transport, maxAttempts: 2 }), (e: unknown) => {
      assert.ok(e instanceof OctoStsError);
      assert.equal(e.code, "PERMISSION_DENIED");
      assert.equal(e.reason, "permission_denied");
      assert.match(e.requestId ?? "", /^[0-9a-f-]{36}$/);
      if (transport === "http") assert.equal(e.status, 403);
      assert.ok(!e.message.includes(live.denied));
      return true;
    });
  });
}
