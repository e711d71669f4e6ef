// Retries, the same rule as the Python client (service/octosts/client/core.py, _Attempts):
//
// - UNAVAILABLE (HTTP 502/503, connection refused: a replica restarting or shedding load) is
//   retried up to maxAttempts calls in all, after an exponential backoff with equal jitter, or
//   after the service's Retry-After when that is longer;
// - RESOURCE_EXHAUSTED (HTTP 429) is retried once, and only when the service said when
//   (Retry-After: a replica or GitHub busy for a second), never for a rate limit lasting past
//   the deadline;
// - nothing else is retried (a denial, a bad token, a call that timed out, an abort);
// - no wait ends past the deadline: the error is thrown at once instead, with retryAfterMs set.

/** A longer Retry-After than this is read as this: no caller should sleep for hours on our word. */
export const MAX_RETRY_AFTER_MS = 3_600_000;

export interface RetryPolicy {
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  multiplier: number;
  deadlineMs: number;
  timeoutMs: number;
}

export const DEFAULT_RETRY: Readonly<RetryPolicy> = {
  maxAttempts: 4,
  initialBackoffMs: 200,
  maxBackoffMs: 5_000,
  multiplier: 2,
  deadlineMs: 30_000,
  timeoutMs: 10_000,
};

/**
 * A Retry-After value (header or gRPC trailer) in milliseconds: whole seconds only (RFC 9110
 * delay-seconds, what the service sends), capped at an hour; an HTTP date or anything else is
 * ignored (undefined).
 */
export function parseRetryAfter(value: string | readonly string[] | null | undefined): number | undefined {
  const first = typeof value === "string" ? value : value?.[0];
  const text = first?.trim();
  if (!text || !/^[0-9]+$/.test(text)) return undefined;
  return Math.min(Number(text) * 1000, MAX_RETRY_AFTER_MS);
}

/** Delay before retry number `retry` (0-based) given `rnd` in [0, 1): half fixed, half random. */
export function backoffMs(policy: RetryPolicy, retry: number, rnd: number): number {
  const cap = Math.min(policy.maxBackoffMs, policy.initialBackoffMs * policy.multiplier ** retry);
  return cap / 2 + (cap / 2) * rnd;
}

/** One exchange's retry budget: attempts made and the overall deadline. */
export class Attempts {
  readonly #deadline: number;
  #waitedForLimit = false;

  constructor(
    readonly policy: RetryPolicy,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.#deadline = now() + policy.deadlineMs;
  }

  /** The next call's timeout; undefined once the deadline has passed. */
  timeout(): number | undefined {
    const remaining = this.#deadline - this.now();
    return remaining > 0 ? Math.min(this.policy.timeoutMs, remaining) : undefined;
  }

  /** The pause before the next attempt, or undefined when the failure is to be thrown as it is. */
  delay(attempt: number, code: string, retryAfterMs: number | undefined, rnd: number): number | undefined {
    if (code === "RESOURCE_EXHAUSTED") {
      if (retryAfterMs === undefined || this.#waitedForLimit) return undefined;
      this.#waitedForLimit = true;
    } else if (code !== "UNAVAILABLE") {
      return undefined;
    }
    if (attempt + 1 >= this.policy.maxAttempts) return undefined;
    const delay = Math.max(backoffMs(this.policy, attempt, rnd), retryAfterMs ?? 0);
    return this.now() + delay >= this.#deadline ? undefined : delay;
  }
}

/** Wait `ms`, or until `signal` aborts (then reject with its reason). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
