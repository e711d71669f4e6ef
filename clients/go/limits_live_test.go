package octosts

// The client against the live stack while GitHub rate-limits it. tests/e2e/test_github_faults.py
// starts a stack of its own, sets the GitHub emulator's limit and runs this test with the
// OCTO_STS_LIVE_* variables of live_test.go and OCTO_STS_LIVE_LIMIT:
//   short  a 1 s limit: the service answers RESOURCE_EXHAUSTED + retry-after at once; the
//          client waits that out (for real) and its one retry gets the token;
//   long   a 60 s limit: past the 20 s deadline, so the error comes back at once with RetryAfter.
// Without OCTO_STS_LIVE_LIMIT it skips (and is not one of the TestLive* tests, which never may).

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

func TestStackRateLimit(t *testing.T) {
	limit := os.Getenv("OCTO_STS_LIVE_LIMIT")
	if limit == "" {
		t.Skip("OCTO_STS_LIVE_LIMIT not set: tests/e2e/test_github_faults.py sets a GitHub limit and runs this")
	}
	env := loadLive(t)
	var waits []time.Duration
	record := func(ctx context.Context, d time.Duration) error {
		waits = append(waits, d)
		return sleepCtx(ctx, d)
	}
	c, err := New(env.target, WithCAFile(env.ca), WithTokenSource(StaticToken(env.token)),
		WithRetry(RetryPolicy{MaxAttempts: 3, Deadline: 20 * time.Second}),
		func(o *options) { o.sleep = record })
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, err := c.Exchange(ctx, env.scope, env.identity)
	switch limit {
	case "short":
		if err != nil {
			t.Fatalf("Exchange: %v (waits %v)", err, waits)
		}
		if !strings.HasPrefix(tok.Value, "ghs_") {
			t.Fatalf("unexpected token %v", tok)
		}
		// The service's retry-after, not the 150 ms backoff: whole seconds, 1 s or more where a
		// replica saw the limit come back before (GitHub's back-off doubles on repeats).
		if len(waits) != 1 || waits[0] < time.Second || waits[0]%time.Second != 0 {
			t.Fatalf("waited %v, want the service's retry-after once", waits)
		}
	case "long":
		e := asError(t, err)
		// 60 s, or a multiple where a replica saw it as a repeat: past the deadline either way.
		if e.Code != codes.ResourceExhausted || e.RetryAfter <= 20*time.Second || e.RetryAfter%time.Second != 0 {
			t.Fatalf("want RESOURCE_EXHAUSTED with the limit's retry-after, got %v", e)
		}
		if len(waits) != 0 || !strings.Contains(e.Error(), "retry_after=") || strings.Contains(e.Error(), env.token) {
			t.Fatalf("error %q after waits %v", e.Error(), waits)
		}
	default:
		t.Fatalf("OCTO_STS_LIVE_LIMIT=%q: want short or long", limit)
	}
}
