// Octo STS client for Node.js: exchange a workload OIDC token for a short-lived GitHub token,
// over native gRPC (Connect's gRPC transport, HTTP/2) or the HTTP/JSON gateway (GET /sts/exchange).
//
//   const tok = await exchange({ endpoint: "https://sts.example.com", scope: "org/repo",
//                                identity: "deploy", token: oidcJwt, caFile: "ca.pem" });
//   use(tok.token); // console.log(tok) / JSON.stringify(tok) never show the token
import { readFileSync } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import { inspect } from "node:util";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { SecurityTokenService } from "./gen/octosts/v1/sts_pb.js";
import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { Attempts, DEFAULT_RETRY, parseRetryAfter, sleep } from "./retry.js";

export * as octostsv1 from "./gen/octosts/v1/sts_pb.js";
export * as chainguardoidc from "./gen/chainguard/platform/oidc/oidc_pb.js";

/** Largest response accepted (a token and its permissions fit in a few KiB). */
export const MAX_RESPONSE_BYTES = 256 * 1024;

export interface ExchangeOptions {
  /** `https://host[:port]` (TLS) or `http://host:port` (plaintext, in-mesh). */
  endpoint: string;
  /**
   * `owner` or `owner/repo`; or several repositories of one owner (`owner/repo` each): one
   * token for all of them, granted only if each one's policy allows the caller, with the
   * permissions they all grant.
   */
  scope: string | readonly string[];
  identity: string;
  /** The workload's OIDC token (JWT). */
  token: string;
  audience?: string;
  /** PEM CA bundle to trust instead of the system roots. */
  caFile?: string;
  transport?: "grpc" | "http";
  /** Per-attempt timeout (default 10 s). */
  timeoutMs?: number;
  /**
   * Calls in all (default 4): UNAVAILABLE / HTTP 502, 503 / connection refused are retried, after
   * the backoff or the service's Retry-After if longer; RESOURCE_EXHAUSTED / HTTP 429 once, only
   * when its Retry-After fits in the deadline. Nothing else is retried.
   */
  maxAttempts?: number;
  /** Overall deadline including retries and their waits (default 30 s). */
  deadlineMs?: number;
  /** First backoff (default 200 ms), doubled each retry up to `maxBackoffMs`, with equal jitter. */
  initialBackoffMs?: number;
  /** Backoff cap (default 5 s). */
  maxBackoffMs?: number;
  /** Aborts the call in flight or the wait before the next one: rejects with code CANCELLED. */
  signal?: AbortSignal;
  /** How the client waits between attempts (default: a timer that `signal` cuts short); tests record the waits. */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** Jitter source in [0, 1) (default Math.random). */
  random?: () => number;
}

/** A minted GitHub token; the token itself is hidden from inspect/JSON. */
export class GitHubToken {
  readonly #token: string;
  constructor(
    token: string,
    readonly expiresAt: Date,
    readonly permissions: Readonly<Record<string, string>>,
    readonly repositories: readonly string[],
    readonly requestId?: string,
  ) {
    this.#token = token;
  }
  get token(): string {
    return this.#token;
  }
  toJSON(): object {
    return { expiresAt: this.expiresAt.toISOString(), permissions: this.permissions, repositories: this.repositories };
  }
  [inspect.custom](): string {
    return `GitHubToken { token: <redacted>, expiresAt: ${this.expiresAt.toISOString()} }`;
  }
}

/**
 * A failed exchange: gRPC code name, HTTP status (gateway), the server's reason and request id,
 * and `retryAfterMs`: how long the service asked the caller to wait before trying again (its
 * Retry-After header or retry-after trailer, sent with RESOURCE_EXHAUSTED / 429 and
 * UNAVAILABLE / 503), undefined when it did not say.
 */
export class OctoStsError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly reason?: string,
    readonly requestId?: string,
    readonly status?: number,
    readonly retryAfterMs?: number,
  ) {
    super(
      `${code}: ${message}${reason ? ` reason=${reason}` : ""}${requestId ? ` request_id=${requestId}` : ""}` +
        (retryAfterMs === undefined ? "" : ` retry_after=${retryAfterMs / 1000}s`),
    );
    this.name = "OctoStsError";
  }
}

const HTTP_CODES: Record<number, string> = {
  400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
  429: "RESOURCE_EXHAUSTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
};

function codeName(code: Code): string {
  if (code === Code.Canceled) return "CANCELLED"; // gRPC's spelling, as the other clients say it
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

function checkToken(token: string): void {
  if (!token || /[\s\x00-\x1f\x7f]/.test(token) || token.length > 16384) {
    throw new OctoStsError("the OIDC token is empty, too large or contains whitespace", "INVALID_ARGUMENT");
  }
}

/** The request's scopes, checked: one or more non-empty names. */
function scopesOf(opts: ExchangeOptions): string[] {
  const scopes = typeof opts.scope === "string" ? [opts.scope] : [...opts.scope];
  if (scopes.length === 0 || scopes.some((s) => typeof s !== "string" || !s)) {
    throw new OctoStsError("scope must be one or more non-empty names", "INVALID_ARGUMENT");
  }
  return scopes;
}

function aborted(): OctoStsError {
  return new OctoStsError("the exchange was aborted", "CANCELLED");
}

/** Exchange, retrying as src/retry.ts says (bounded attempts, overall deadline, Retry-After). */
export async function exchange(opts: ExchangeOptions): Promise<GitHubToken> {
  checkToken(opts.token);
  scopesOf(opts);
  const attempts = new Attempts({
    maxAttempts: opts.maxAttempts ?? DEFAULT_RETRY.maxAttempts,
    initialBackoffMs: opts.initialBackoffMs ?? DEFAULT_RETRY.initialBackoffMs,
    maxBackoffMs: opts.maxBackoffMs ?? DEFAULT_RETRY.maxBackoffMs,
    multiplier: DEFAULT_RETRY.multiplier,
    deadlineMs: opts.deadlineMs ?? DEFAULT_RETRY.deadlineMs,
    timeoutMs: opts.timeoutMs ?? DEFAULT_RETRY.timeoutMs,
  });
  const once = opts.transport === "http" ? exchangeHttpOnce : exchangeGrpcOnce;
  const wait = opts.sleep ?? sleep;
  const random = opts.random ?? Math.random;
  for (let attempt = 0; ; attempt++) {
    if (opts.signal?.aborted) throw aborted();
    const timeoutMs = attempts.timeout();
    if (timeoutMs === undefined) throw new OctoStsError("the exchange deadline passed", "DEADLINE_EXCEEDED");
    try {
      return await once(opts, timeoutMs);
    } catch (err) {
      if (!(err instanceof OctoStsError)) throw err;
      const delay = attempts.delay(attempt, err.code, err.retryAfterMs, random());
      if (delay === undefined) throw err;
      try {
        await wait(delay, opts.signal);
      } catch (waitErr) {
        throw opts.signal?.aborted ? aborted() : waitErr;
      }
    }
  }
}

async function exchangeGrpcOnce(opts: ExchangeOptions, timeoutMs: number): Promise<GitHubToken> {
  const ca = opts.caFile ? readFileSync(opts.caFile) : undefined;
  // One HTTP/2 session per attempt, closed afterwards: an idle session would keep the
  // Node.js process (a CLI, a CI step) alive for minutes.
  const sessionManager = new Http2SessionManager(opts.endpoint, {}, ca ? { ca } : {});
  const transport = createGrpcTransport({
    baseUrl: opts.endpoint,
    readMaxBytes: MAX_RESPONSE_BYTES,
    sessionManager,
  });
  const client = createClient(SecurityTokenService, transport);
  let requestId: string | undefined;
  try {
    // One scope goes in `scope`, which every server version reads; several in `scopes`.
    const scopes = scopesOf(opts);
    const one = scopes.length === 1 ? { scope: scopes[0] } : { scopes };
    const res = await client.exchange(
      { ...one, identity: opts.identity, audience: opts.audience },
      {
        headers: { authorization: `Bearer ${opts.token}` },
        timeoutMs,
        signal: opts.signal,
        onHeader: (h) => {
          requestId = h.get("x-request-id") ?? undefined;
        },
      },
    );
    const token = res.token || res.accessToken;
    if (!token) throw new OctoStsError("the response carries no token", "INTERNAL", undefined, requestId);
    const expiresAt = res.expiresAt ? timestampDate(res.expiresAt) : new Date(Date.now() + res.expiresIn * 1000);
    return new GitHubToken(token, expiresAt, { ...res.permissions }, [...res.repositories], requestId);
  } catch (err) {
    if (err instanceof OctoStsError) throw err;
    const ce = ConnectError.from(err);
    const info = ce.findDetails(ErrorInfoSchema)[0];
    throw new OctoStsError(
      ce.rawMessage,
      codeName(ce.code),
      info?.reason || undefined,
      info?.metadata["request_id"] || ce.metadata.get("x-request-id") || undefined,
      undefined,
      // Trailers and headers alike: Connect merges both into the error's metadata.
      parseRetryAfter(ce.metadata.get("retry-after")),
    );
  } finally {
    sessionManager.abort();
  }
}

function get(
  url: URL,
  headers: Record<string, string>,
  ca: Buffer | undefined,
  timeoutMs: number,
  signal: AbortSignal | undefined,
) {
  return new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }>((resolve, reject) => {
    const mod = url.protocol === "https:" ? https : http;
    const req = mod.request(url, { method: "GET", headers, ca, timeout: timeoutMs, signal }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on("data", (c: Buffer) => {
        size += c.length;
        if (size > MAX_RESPONSE_BYTES) {
          req.destroy(new OctoStsError(`the response is larger than ${MAX_RESPONSE_BYTES} bytes`, "INTERNAL"));
          return;
        }
        chunks.push(c);
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on("error", (e) => reject(signal?.aborted ? aborted() : e));
    });
    req.on("timeout", () => req.destroy(new OctoStsError("the request timed out", "DEADLINE_EXCEEDED")));
    req.on("error", (e) => {
      if (e instanceof OctoStsError) return reject(e);
      // An abort is the caller's, not the service being unreachable: never retried.
      if (signal?.aborted) return reject(aborted());
      reject(new OctoStsError(`cannot reach the service: ${e.message}`, "UNAVAILABLE"));
    });
    req.end();
  });
}

async function exchangeHttpOnce(opts: ExchangeOptions, timeoutMs: number): Promise<GitHubToken> {
  const url = new URL("/sts/exchange", opts.endpoint);
  const scopes = scopesOf(opts);
  for (const scope of scopes) url.searchParams.append(scopes.length === 1 ? "scope" : "scopes", scope);
  url.searchParams.set("identity", opts.identity);
  if (opts.audience !== undefined) url.searchParams.set("audience", opts.audience);
  const ca = opts.caFile ? readFileSync(opts.caFile) : undefined;
  const res = await get(url, { authorization: `Bearer ${opts.token}`, accept: "application/json" }, ca, timeoutMs, opts.signal);
  const headerId = res.headers["x-request-id"];
  let requestId = typeof headerId === "string" ? headerId : undefined;
  let data: any;
  try {
    data = JSON.parse(res.body.toString("utf8"));
  } catch {
    data = undefined;
  }
  if (res.status !== 200) {
    let code = HTTP_CODES[res.status] ?? "INTERNAL";
    let reason: string | undefined;
    let message = `HTTP ${res.status}`;
    if (data && typeof data === "object") {
      if (typeof data.message === "string") message = data.message;
      if (typeof data.request_id === "string") requestId ??= data.request_id;
      if (typeof data.code === "string" && !/^[A-Z_]+$/.test(data.code)) reason = data.code;
      for (const d of Array.isArray(data.details) ? data.details : []) {
        // The transcoder renders the server's google.rpc.ErrorInfo: reason and metadata.request_id.
        if (d?.["@type"] !== "type.googleapis.com/google.rpc.ErrorInfo") continue;
        if (typeof d.reason === "string" && d.reason) reason ??= d.reason;
        const rid = d.metadata?.request_id;
        if (typeof rid === "string" && rid) requestId ??= rid;
      }
    } else {
      message = res.body.toString("utf8").split("\n")[0].slice(0, 300) || message;
    }
    throw new OctoStsError(message, code, reason, requestId, res.status, parseRetryAfter(res.headers["retry-after"]));
  }
  const token = data?.token || data?.access_token;
  if (typeof token !== "string" || !token) throw new OctoStsError("the response carries no token", "INTERNAL", undefined, requestId);
  const expiresAt = data.expires_at ? new Date(data.expires_at) : new Date(Date.now() + Number(data.expires_in) * 1000);
  if (Number.isNaN(expiresAt.getTime())) throw new OctoStsError("the response carries no expiry", "INTERNAL", undefined, requestId);
  return new GitHubToken(token, expiresAt, { ...(data.permissions ?? {}) }, [...(data.repositories ?? [])], requestId);
}
