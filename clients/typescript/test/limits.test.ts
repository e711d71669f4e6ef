// The client against the live stack while GitHub rate-limits it. tests/e2e/test_github_faults.py
// starts a stack of its own, sets the GitHub emulator's limit and runs this file with the
// OCTO_STS_LIVE_* variables of live.test.ts, OCTO_STS_LIVE_TRANSPORT (grpc|http) and
// OCTO_STS_LIVE_LIMIT:
//   short  a 1 s limit: the service answers 429 / RESOURCE_EXHAUSTED + Retry-After at once; the
//          client waits that out (for real) and its one retry gets the token;
//   long   a 60 s limit: past the 20 s deadline, so the error comes back at once with retryAfterMs.
// Without OCTO_STS_LIVE_LIMIT it is skipped.
import { test } from "node:test";
import assert from "node:assert/strict";
import { exchange, OctoStsError } from "../src/index.js";
import { sleep } from "../src/retry.js";

const env = process.env;
const limit = env.OCTO_STS_LIVE_LIMIT ?? "";
const transport = env.OCTO_STS_LIVE_TRANSPORT === "http" ? "http" : "grpc";
const live = {
  endpoint: env.OCTO_STS_LIVE_ENDPOINT ?? "",
  caFile: env.OCTO_STS_LIVE_CA ?? "",
  scope: env.OCTO_STS_LIVE_SCOPE ?? "",
  identity: env.OCTO_STS_LIVE_IDENTITY ?? "",
  token: env.OCTO_STS_LIVE_TOKEN ?? "",
};
const skip = !limit || Object.values(live).some((v) => !v)
  ? "OCTO_STS_LIVE_LIMIT / OCTO_STS_LIVE_* not set: tests/e2e/test_github_faults.py sets a GitHub limit and runs this"
  : false;

test(`live ${transport}: a ${limit || "GitHub"} rate limit`, { skip, timeout: 40_000 }, async () => {
  const waits: number[] = [];
  const opts = {
    ...live, transport, maxAttempts: 3, deadlineMs: 20_000,
    sleep: (ms: number, signal?: AbortSignal) => {
      waits.push(ms);
      return sleep(ms, signal);
    },
  } as const;
  if (limit === "short") {
    const tok = await exchange(opts);
    assert.match(tok.token, /^ghs_/);
    // The service's Retry-After, not the 150 ms backoff: whole seconds, 1 s or more where a
    // replica saw the limit come back before (GitHub's back-off doubles on repeats).
    assert.equal(waits.length, 1, `waits ${waits}`);
    assert.ok(waits[0] >= 1000 && waits[0] % 1000 === 0, `waits ${waits}`);
  } else {
    assert.equal(limit, "long");
    await assert.rejects(exchange(opts), (e: unknown) => {
      assert.ok(e instanceof OctoStsError, String(e));
      assert.equal(e.code, "RESOURCE_EXHAUSTED");
      if (transport === "http") assert.equal(e.status, 429);
      // 60 s, or a multiple where a replica saw it as a repeat: past the deadline either way.
      assert.ok((e.retryAfterMs ?? 0) > 20_000 && (e.retryAfterMs ?? 0) % 1000 === 0, e.message);
      assert.match(e.message, /retry_after=\d+s/);
      assert.ok(!e.message.includes(live.token));
      return true;
    });
    assert.deepEqual(waits, []);
  }
});
