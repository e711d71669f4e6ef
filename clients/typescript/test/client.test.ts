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

const OIDC = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
const MINTED = "ghs_tsStandInToken";
const EXPIRES = new Date("2031-01-02T03:04:05Z");

const script = { unavailable: 0, deny: false, calls: [] as Record<string, unknown>[] };
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
  script.calls = [];
}

const base = { scope: "org/app", identity: "deploy", token: OIDC, initialBackoffMs: 5 };

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
