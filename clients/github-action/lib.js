// Shared by main.js and post.js. No dependencies: Node 20's fetch only.
// Private CAs: set NODE_EXTRA_CA_CERTS in the job's environment.
"use strict";
const fs = require("node:fs");

const MAX_BYTES = 256 * 1024;
const TIMEOUT_MS = 15000;

function input(env, name, fallback = "") {
  const v = env[`INPUT_${name.replace(/ /g, "_").toUpperCase()}`];
  return v && v.trim() ? v.trim() : fallback;
}

async function readCapped(res) {
  const buf = Buffer.from(await res.arrayBuffer());
  if (buf.length > MAX_BYTES) throw new Error(`response larger than ${MAX_BYTES} bytes`);
  return buf.toString("utf8");
}

function withRetry(fn, attempts = 4) {
  return (async () => {
    for (let i = 0; ; i++) {
      try {
        return await fn();
      } catch (err) {
        if (!err.retryable || i + 1 >= attempts) throw err;
        const cap = Math.min(5000, 250 * 2 ** i);
        await new Promise((r) => setTimeout(r, cap / 2 + (Math.random() * cap) / 2));
      }
    }
  })();
}

async function fetchOidcToken(env, audience) {
  const url = env.ACTIONS_ID_TOKEN_REQUEST_URL;
  const requestToken = env.ACTIONS_ID_TOKEN_REQUEST_TOKEN;
  if (!url || !requestToken) {
    throw new Error("ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN are not set: add `permissions: id-token: write` to the job");
  }
  const u = new URL(url);
  u.searchParams.set("audience", audience);
  const res = await fetch(u, {
    headers: { authorization: `bearer ${requestToken}`, accept: "application/json" },
    signal: AbortSignal.timeout(TIMEOUT_MS),
  });
  const body = await readCapped(res);
  if (res.status !== 200) throw new Error(`the Actions token endpoint answered HTTP ${res.status}`);
  const value = JSON.parse(body).value;
  if (typeof value !== "string" || !value) throw new Error("the Actions token endpoint sent no value");
  return value;
}

// The same request octo-sts's own action makes: GET /sts/exchange?scope=..&identity=.., read `.token`.
async function exchange(endpoint, scope, identity, oidcToken) {
  return withRetry(async () => {
    const u = new URL("/sts/exchange", endpoint);
    u.searchParams.set("scope", scope);
    u.searchParams.set("identity", identity);
    let res;
    try {
      res = await fetch(u, {
        headers: { authorization: `Bearer ${oidcToken}`, accept: "application/json" },
        signal: AbortSignal.timeout(TIMEOUT_MS),
      });
    } catch (err) {
      const e = new Error(`cannot reach ${u.origin}: ${err.cause?.code || err.name}`);
      e.retryable = err.name !== "TimeoutError";
      throw e;
    }
    const body = await readCapped(res);
    let data;
    try {
      data = JSON.parse(body);
    } catch {
      data = null;
    }
    if (res.status !== 200) {
      const msg = data && typeof data.message === "string" ? data.message : body.split("\n")[0].slice(0, 300);
      // Envoy's x-request-id header, else the server's google.rpc.ErrorInfo or the edge's body.
      const info = Array.isArray(data?.details) ? data.details.find((d) => d?.["@type"]?.endsWith("google.rpc.ErrorInfo")) : undefined;
      const rid = res.headers.get("x-request-id") || info?.metadata?.request_id || data?.request_id || "";
      const e = new Error(`exchange failed: HTTP ${res.status}: ${msg}${rid ? ` (request id ${rid})` : ""}`);
      e.retryable = res.status === 503;
      throw e;
    }
    if (!data || typeof data.token !== "string" || !data.token) throw new Error("exchange failed: no token in the response");
    return data.token;
  });
}

async function revoke(apiUrl, token) {
  const res = await fetch(`${apiUrl.replace(/\/+$/, "")}/installation/token`, {
    method: "DELETE",
    headers: { authorization: `Bearer ${token}`, accept: "application/vnd.github+json", "x-github-api-version": "2022-11-28" },
    signal: AbortSignal.timeout(TIMEOUT_MS),
  });
  await readCapped(res);
  return res.status;
}

// GITHUB_OUTPUT / GITHUB_STATE use `name<<DELIM` blocks; the delimiter is random so a value cannot end it.
function appendFileCommand(path, name, value) {
  const delim = `ghadelim_${require("node:crypto").randomUUID()}`;
  fs.appendFileSync(path, `${name}<<${delim}\n${value}\n${delim}\n`);
}

module.exports = { input, fetchOidcToken, exchange, revoke, appendFileCommand };
