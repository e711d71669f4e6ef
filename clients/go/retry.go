package octosts

// Retries, the same rule as the Python client (service/octosts/client/core.py, _Attempts):
//
//   - UNAVAILABLE (a replica restarting or shedding load, connection refused) is retried up to
//     MaxAttempts calls in all, after an exponential backoff with equal jitter, or after the
//     service's retry-after when that is longer;
//   - RESOURCE_EXHAUSTED is retried once, and only when the service said when (retry-after: a
//     replica or GitHub busy for a second), never for a rate limit lasting past the deadline;
//   - nothing else is retried (a denial, a bad token, a call that timed out);
//   - no wait ends past the deadline: the earlier of ctx's and the policy's Deadline. The
//     error is returned at once instead, with RetryAfter set, so the caller knows when.

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// retryAfterKey is the metadata the service sends with RESOURCE_EXHAUSTED and UNAVAILABLE
// answers (a trailer over gRPC, the Retry-After header over HTTP): whole seconds to wait.
const retryAfterKey = "retry-after"

// maxRetryAfter bounds what is read from retry-after: no caller should sleep for hours on our word.
const maxRetryAfter = time.Hour

// RetryPolicy bounds the retries of one exchange. A zero field takes its default (DefaultRetryPolicy);
// RetryPolicy{MaxAttempts: 1} never retries.
type RetryPolicy struct {
	MaxAttempts    int           // calls in all, the first included (default 4)
	InitialBackoff time.Duration // first backoff (default 200ms), times Multiplier per retry
	MaxBackoff     time.Duration // backoff cap (default 5s)
	Multiplier     float64       // default 2
	Deadline       time.Duration // the whole exchange, retries included (default 30s); ctx's deadline wins when earlier
	AttemptTimeout time.Duration // one call (default 10s)
}

// DefaultRetryPolicy is the Python client's RetryPolicy().
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{
		MaxAttempts: 4, InitialBackoff: 200 * time.Millisecond, MaxBackoff: 5 * time.Second,
		Multiplier: 2, Deadline: 30 * time.Second, AttemptTimeout: 10 * time.Second,
	}
}

// WithRetry sets how exchanges are retried (zero fields keep their defaults).
func WithRetry(p RetryPolicy) Option { return func(o *options) { o.retry = p } }

func (p RetryPolicy) withDefaults() (RetryPolicy, error) {
	d := DefaultRetryPolicy()
	if p.MaxAttempts < 0 || p.InitialBackoff < 0 || p.MaxBackoff < 0 || p.Deadline < 0 || p.AttemptTimeout < 0 {
		return p, errors.New("octosts: retry policy values must not be negative")
	}
	if p.Multiplier != 0 && p.Multiplier < 1 {
		return p, errors.New("octosts: retry policy multiplier must be at least 1")
	}
	if p.MaxAttempts == 0 {
		p.MaxAttempts = d.MaxAttempts
	}
	if p.InitialBackoff == 0 {
		p.InitialBackoff = d.InitialBackoff
	}
	if p.MaxBackoff == 0 {
		p.MaxBackoff = d.MaxBackoff
	}
	if p.Multiplier == 0 {
		p.Multiplier = d.Multiplier
	}
	if p.Deadline == 0 {
		p.Deadline = d.Deadline
	}
	if p.AttemptTimeout == 0 {
		p.AttemptTimeout = d.AttemptTimeout
	}
	return p, nil
}

// backoff is the delay before retry number retry (0-based) given rnd in [0, 1): "equal jitter",
// half fixed and half random, so many clients restarting together spread out.
func (p RetryPolicy) backoff(retry int, rnd float64) time.Duration {
	ceiling := math.Min(float64(p.MaxBackoff), float64(p.InitialBackoff)*math.Pow(p.Multiplier, float64(retry)))
	return time.Duration(ceiling/2 + ceiling/2*rnd)
}

// attempts keeps one exchange's retry budget: attempts made and the overall deadline.
type attempts struct {
	policy         RetryPolicy
	deadline       time.Time
	waitedForLimit bool
}

func newAttempts(ctx context.Context, p RetryPolicy) *attempts {
	deadline := time.Now().Add(p.Deadline)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	return &attempts{policy: p, deadline: deadline}
}

// timeout is the next call's timeout, or an error once the deadline has passed.
func (a *attempts) timeout() (time.Duration, error) {
	remaining := time.Until(a.deadline)
	if remaining <= 0 {
		return 0, &Error{Code: codes.DeadlineExceeded, Message: "the exchange deadline passed"}
	}
	return min(a.policy.AttemptTimeout, remaining), nil
}

// delay is the pause before the next attempt, or false when e is to be returned as it is.
func (a *attempts) delay(attempt int, e *Error, rnd float64) (time.Duration, bool) {
	switch e.Code {
	case codes.Unavailable:
	case codes.ResourceExhausted:
		if !e.retryAfterSent || a.waitedForLimit {
			return 0, false
		}
		a.waitedForLimit = true
	default:
		return 0, false
	}
	if attempt+1 >= a.policy.MaxAttempts {
		return 0, false
	}
	d := max(a.policy.backoff(attempt, rnd), e.RetryAfter)
	if !time.Now().Add(d).Before(a.deadline) {
		return 0, false
	}
	return d, true
}

// sleepCtx waits d, or until ctx is done (then its error).
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// contextError is a cancelled or expired ctx as the *Error an RPC would have returned.
func contextError(err error) *Error {
	st := status.FromContextError(err)
	return &Error{Code: st.Code(), Message: st.Message()}
}

// parseRetryAfter reads a retry-after value: whole seconds (RFC 9110 delay-seconds), capped at
// maxRetryAfter; an HTTP date or anything else is ignored (false).
func parseRetryAfter(value string) (time.Duration, bool) {
	value = strings.TrimSpace(value)
	if value == "" || strings.Trim(value, "0123456789") != "" {
		return 0, false
	}
	seconds, err := strconv.ParseUint(value, 10, 64)
	if err != nil || seconds > uint64(maxRetryAfter/time.Second) {
		return maxRetryAfter, true // only digits: too many of them
	}
	return time.Duration(seconds) * time.Second, true
}

// retryAfterIn is the first retry-after value of the answer's metadata (trailers, then headers:
// a trailers-only answer may reach either).
func retryAfterIn(mds ...metadata.MD) (time.Duration, bool) {
	for _, md := range mds {
		if v := md.Get(retryAfterKey); len(v) > 0 {
			return parseRetryAfter(v[0])
		}
	}
	return 0, false
}

func defaultRand() float64 { return rand.Float64() }
