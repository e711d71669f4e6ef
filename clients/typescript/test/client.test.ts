// Tests against in-process stand-ins: a gRPC server (Connect's Node adapter over h2c) and an HTTP gateway.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import * as http from "node:http";
import * as http2 from "node:http2";
import { inspect } from "node:util";
import type { AddressInfo } from "node:net";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { ExchangeResponseSchema, SecurityTokenService } from "../src/gen/octosts/v1/sts_pb.js";
import { ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { exchange, OctoStsError } from "../src/index.js";
import { parseRetryAfter, sleep } from "../src/retry.js";

const OIDC = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
const MINTED = "ghs_tsStandInToken";
const EXPIRES = new Date("2031-01-02T03:04:05Z");

// A refusal as the service sheds load or GitHub rate-limits: the code and its retry-after ("" sends none).
type Refusal = { code: "UNAVAILABLE" | "RESOURCE_EXHAUSTED"; retryAfter: string };
const script = { unavailable: 0, deny: false, refusals: [] as Refusal[], calls: [] as Record<string, unknown>[] };
let grpcServer: http2.Http2Server;
let httpServer: http.Server;
let grpcEndpoint = "";
let httpEndpoint = "";

function routes(router: ConnectRouter) {
  router.service(SecurityTokenService, {
    exchange(req, ctx) {
      const auth = ctx.requestHeader.get("authorization");
      script.calls.push({ scope: req.scope, scopes: [...req.scopes], identity: req.identity, audience: req.audience, auth });
      if (script.unavailable > 0) {
        script.unavailable--;
        throw new ConnectError("replica restarting", Code.Unavailable);
      }
      const refusal = script.refusals.shift();
      if (refusal) {
        // Error metadata goes out as trailers (trailers-only, as the service answers).
        const trailer: Record<string, string> = refusal.retryAfter ? { "retry-after": refusal.retryAfter } : {};
        const code = refusal.code === "UNAVAILABLE" ? Code.Unavailable : Code.ResourceExhausted;
        throw new ConnectError("overloaded", code, trailer);
      }
      if (auth !== `Bearer ${OIDC}`) throw new ConnectError("token expired", Code.Unauthenticated);
      if (script.deny) {
        throw new ConnectError("no trust policy matched", Code.PermissionDenied, undefined, [
          { desc: ErrorInfoSchema, value: { reason: "policy_denied", metadata: { request_id: "r-7" } } },
        ]);
      }
      ctx.responseHeader.set("x-request-id", "r-ok");
      return create(ExchangeResponseSchema, {
        token: MINTED, accessToken: MINTED, tokenType: "Bearer", expiresIn: 3600,
        expiresAt: timestampFromDate(EXPIRES), permissions: { contents: "read" }, repositories: ["app"],
      });
    },
  });
}

function gateway(req: http.IncomingMessage, res: http.ServerResponse) {
  const url = new URL(req.url ?? "/", "http://x");
  const send = (status: number, body: unknown, headers: Record<string, string> = {}) => {
    res.writeHead(status, { "content-type": "application/json", ...headers });
    res.end(typeof body === "string" ? body : JSON.stringify(body));
  };
  script.calls.push({
    ...Object.fromEntries(url.searchParams), scopes: url.searchParams.getAll("scopes"), auth: req.headers.authorization,
  });
  if (url.pathname !== "/sts/exchange") return send(404, { code: 5, message: "not found" });
  if (script.unavailable > 0) {
    script.unavailable--;
    return send(503, "upstream connect error", { "content-type": "text/plain" });
  }
  const refusal = script.refusals.shift();
  if (refusal) {
    const [status, code] = refusal.code === "UNAVAILABLE" ? [503, 14] : [429, 8];
    return send(status, { code, message: "overloaded" }, refusal.retryAfter ? { "retry-after": refusal.retryAfter } : {});
  }
  if (req.headers.authorization !== `Bearer ${OIDC}`) {
    return send(401, { code: "token_expired", message: "token expired", request_id: "edge-1" });
  }
  if (script.deny) {
    return send(403, {
      code: 7, message: "no trust policy matched",
      // Only the ErrorInfo carries the request id here: the client must read its metadata.
      details: [{ "@type": "type.googleapis.com/google.rpc.ErrorInfo", reason: "policy_denied",
                  domain: "octo-sts.dev", metadata: { request_id: "r-7" } }],
    });
  }
  send(200, {
    token: MINTED, access_token: MINTED, token_type: "Bearer", expires_in: 3600,
    expires_at: "2031-01-02T03:04:05Z", permissions: { contents: "read" }, repositories: ["app"],
  }, { "x-request-id": "r-ok" });
}

before(async () => {
  grpcServer = http2.createServer(connectNodeAdapter({ routes }));
  httpServer = http.createServer(gateway);
  await new Promise<void>((r) => grpcServer.listen(0, "127.0.0.1", r));
  await new Promise<void>((r) => httpServer.listen(0, "127.0.0.1", r));
  grpcEndpoint = `http://127.0.0.1:${(grpcServer.address() as AddressInfo).port}`;
  httpEndpoint = `http://127.0.0.1:${(httpServer.address() as AddressInfo).port}`;
});

after(async () => {
  httpServer.closeAllConnections();
  await new Promise((r) => httpServer.close(r));
  await new Promise((r) => grpcServer.close(r));
});

function reset() {
  script.unavailable = 0;
  script.deny = false;
  script.refusals = [];
  script.calls = [];
}

const base = { scope: "org/app", identity: "deploy", token: OIDC, initialBackoffMs: 5 };

/** Records the waits asked for instead of waiting; `before` runs first (a test aborts there). */
function recorder(before?: () => void) {
  const waits: number[] = [];
  const sleep = async (ms: number, signal?: AbortSignal) => {
    waits.push(ms);
    before?.();
    if (signal?.aborted) throw signal.reason;
  };
  // Fixed jitter: backoffs are exactly 3/4 of their cap.
  return { waits, sleep, random: () => 0.5 };
}

for (const transport of ["grpc", "http"] as const) {
  const endpoint = () => (transport === "grpc" ? grpcEndpoint : httpEndpoint);

  test(`${transport}: exchange returns the token and hides it`, async () => {
    reset();
    const tok = await exchange({ ...base, endpoint: endpoint(), transport, audience: "sts.example" });
    assert.equal(tok.token, MINTED);
    assert.equal(tok.expiresAt.toISOString(), EXPIRES.toISOString());
    assert.deepEqual(tok.permissions, { contents: "read" });
    assert.deepEqual(tok.repositories, ["app"]);
    assert.equal(tok.requestId, "r-ok");
    assert.ok(!inspect(tok).includes(MINTED));
    assert.ok(!JSON.stringify(tok).includes(MINTED));
    assert.equal(script.calls.length, 1);
    assert.equal(script.calls[0].auth, `Bearer ${OIDC}`);
    assert.equal(script.calls[0].audience, "sts.example");
  });

  test(`${transport}: one scope is sent as scope, several as scopes`, async () => {
    reset();
    await exchange({ ...base, endpoint: endpoint(), transport, scope: ["org/app", "org/lib"] });
    assert.equal(script.calls[0].scope ?? "", "");
    assert.deepEqual(script.calls[0].scopes, ["org/app", "org/lib"]);
    await exchange({ ...base, endpoint: endpoint(), transport, scope: ["org"] });
    assert.equal(script.calls[1].scope, "org");
    assert.deepEqual(script.calls[1].scopes, []);
    await assert.rejects(exchange({ ...base, endpoint: endpoint(), transport, scope: [] }), (e: OctoStsError) => e.code === "INVALID_ARGUMENT");
    assert.equal(script.calls.length, 2);
  });

  test(`${transport}: retries UNAVAILABLE, bounded`, async () => {
    reset();
    script.unavailable = 2;
    assert.equal((await exchange({ ...base, endpoint: endpoint(), transport })).token, MINTED);
    assert.equal(script.calls.length, 3);
    reset();
    script.unavailable = 10;
    await assert.rejects(exchange({ ...base, endpoint: endpoint(), transport, maxAttempts: 3 }), (e: OctoStsError) => e.code === "UNAVAILABLE");
    assert.equal(script.calls.length, 3);
  });

  test(`${transport}: denial is not retried and carries the reason`, async () => {
    reset();
    script.deny = true;
    await assert.rejects(exchange({ ...base, endpoint: endpoint(), transport }), (e: OctoStsError) => {
      assert.equal(e.code, "PERMISSION_DENIED");
      assert.equal(e.reason, "policy_denied");
      assert.equal(e.requestId, "r-7");
      assert.ok(!e.message.includes(OIDC));
      return true;
    });
    assert.equal(script.calls.length, 1);
  });

  test(`${transport}: wrong token is UNAUTHENTICATED`, async () => {
    reset();
    await assert.rejects(exchange({ ...base, token: "other.jwt.x", endpoint: endpoint(), transport }), (e: OctoStsError) => e.code === "UNAUTHENTICATED");
  });
}

test("a token with a newline is refused before any request", async () => {
  reset();
  await assert.rejects(exchange({ ...base, token: "a\nb", endpoint: httpEndpoint, transport: "http" }), OctoStsError);
  assert.equal(script.calls.length, 0);
});

for (const transport of ["grpc", "http"] as const) {
  const endpoint = () => (transport === "grpc" ? grpcEndpoint : httpEndpoint);
  const rejectsWith = (code: string, retryAfterMs: number | undefined) => (e: unknown) => {
    assert.ok(e instanceof OctoStsError, String(e));
    assert.equal(e.code, code);
    assert.equal(e.retryAfterMs, retryAfterMs);
    assert.equal(e.message.includes("retry_after="), retryAfterMs !== undefined);
    assert.ok(!e.message.includes(OIDC));
    return true;
  };

  test(`${transport}: UNAVAILABLE waits at least Retry-After`, async () => {
    reset();
    script.refusals = [{ code: "UNAVAILABLE", retryAfter: "1" }, { code: "UNAVAILABLE", retryAfter: "" }];
    const rec = recorder();
    const tok = await exchange({ ...base, initialBackoffMs: 200, endpoint: endpoint(), transport, ...rec });
    assert.equal(tok.token, MINTED);
    assert.equal(script.calls.length, 3);
    // The service's second, not the 150 ms backoff; then the second backoff (cap 400 ms).
    assert.deepEqual(rec.waits, [1000, 300]);
  });

  test(`${transport}: RESOURCE_EXHAUSTED with Retry-After is retried once`, async () => {
    reset();
    script.refusals = [{ code: "RESOURCE_EXHAUSTED", retryAfter: "1" }];
    let rec = recorder();
    assert.equal((await exchange({ ...base, endpoint: endpoint(), transport, ...rec })).token, MINTED);
    assert.deepEqual(rec.waits, [1000]);
    assert.equal(script.calls.length, 2);

    reset();
    script.refusals = [{ code: "RESOURCE_EXHAUSTED", retryAfter: "1" }, { code: "RESOURCE_EXHAUSTED", retryAfter: "2" }];
    rec = recorder();
    await assert.rejects(exchange({ ...base, endpoint: endpoint(), transport, ...rec }), rejectsWith("RESOURCE_EXHAUSTED", 2000));
    assert.deepEqual(rec.waits, [1000]);
    assert.equal(script.calls.length, 2);
  });

  test(`${transport}: RESOURCE_EXHAUSTED without a usable Retry-After is not retried`, async () => {
    for (const retryAfter of ["", "Wed, 21 Oct 2026 07:28:00 GMT", "1.5", "-1"]) {
      reset();
      script.refusals = [{ code: "RESOURCE_EXHAUSTED", retryAfter }];
      const rec = recorder();
      await assert.rejects(exchange({ ...base, endpoint: endpoint(), transport, ...rec }), rejectsWith("RESOURCE_EXHAUSTED", undefined));
      assert.deepEqual(rec.waits, []);
      assert.equal(script.calls.length, 1);
    }
  });

  test(`${transport}: a wait past the deadline is thrown at once with retryAfterMs`, async () => {
    reset();
    // A GitHub rate limit for a minute does not fit a 20 s deadline.
    script.refusals = [{ code: "RESOURCE_EXHAUSTED", retryAfter: "60" }];
    let rec = recorder();
    await assert.rejects(
      exchange({ ...base, endpoint: endpoint(), transport, deadlineMs: 20_000, ...rec }),
      rejectsWith("RESOURCE_EXHAUSTED", 60_000),
    );
    reset();
    script.refusals = [{ code: "UNAVAILABLE", retryAfter: "99999" }]; // read as an hour
    rec = recorder();
    await assert.rejects(exchange({ ...base, endpoint: endpoint(), transport, ...rec }), rejectsWith("UNAVAILABLE", 3_600_000));
    assert.deepEqual(rec.waits, []);
    assert.equal(script.calls.length, 1);
  });

  test(`${transport}: an abort ends the wait and is never retried`, { timeout: 10_000 }, async () => {
    reset();
    script.refusals = [{ code: "UNAVAILABLE", retryAfter: "20" }];
    const controller = new AbortController();
    const rec = recorder(() => controller.abort());
    await assert.rejects(
      exchange({ ...base, endpoint: endpoint(), transport, signal: controller.signal, ...rec }),
      (e: OctoStsError) => e.code === "CANCELLED",
    );
    assert.equal(script.calls.length, 1);
    reset();
    await assert.rejects(
      exchange({ ...base, endpoint: endpoint(), transport, signal: controller.signal }),
      (e: OctoStsError) => e.code === "CANCELLED",
    );
    assert.equal(script.calls.length, 0);
  });
}

test("the default wait ends when the signal aborts", { timeout: 10_000 }, async () => {
  const controller = new AbortController();
  const waiting = sleep(3_600_000, controller.signal);
  controller.abort(new Error("stop"));
  await assert.rejects(waiting, /stop/);
});

test("an abort during the call is CANCELLED, not retried as UNAVAILABLE", { timeout: 10_000 }, async () => {
  // A gateway that never answers: the abort is the only way out.
  const silent = http.createServer(() => {
    script.calls.push({});
    controller.abort();
  });
  const controller = new AbortController();
  await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
  try {
    reset();
    const endpoint = `http://127.0.0.1:${(silent.address() as AddressInfo).port}`;
    await assert.rejects(
      // One attempt: the abort must not be reported as the service being unreachable.
      exchange({ ...base, endpoint, transport: "http", signal: controller.signal, maxAttempts: 1 }),
      (e: OctoStsError) => e.code === "CANCELLED",
    );
    assert.equal(script.calls.length, 1);
  } finally {
    silent.closeAllConnections();
    await new Promise((r) => silent.close(r));
  }
});

test("Retry-After is read as whole seconds, capped at an hour", () => {
  assert.equal(parseRetryAfter("1"), 1000);
  assert.equal(parseRetryAfter(" 30 "), 30_000);
  assert.equal(parseRetryAfter("0"), 0);
  assert.equal(parseRetryAfter(["2", "3"]), 2000);
  assert.equal(parseRetryAfter("86400"), 3_600_000);
  for (const v of [undefined, null, "", "1.5", "-1", "+1", "1s", "Wed, 21 Oct 2026 07:28:00 GMT"]) {
    assert.equal(parseRetryAfter(v), undefined, String(v));
  }
});
