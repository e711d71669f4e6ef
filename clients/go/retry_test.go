package octosts

// Retries against a real gRPC server on 127.0.0.1 that answers as the service does when it
// sheds load or GitHub rate-limits: UNAVAILABLE / RESOURCE_EXHAUSTED with a retry-after trailer
// (a trailers-only answer). Waits go to a recording sleeper: no test sleeps for real.

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/octo-sts/octo-sts-python/clients/go/octostsv1"
)

// refusal is one scripted failure: its code and retry-after trailer ("" sends none).
type refusal struct {
	code       codes.Code
	retryAfter string
}

// scripted answers with its refusals in order, then as the stand-in does.
type scripted struct {
	standIn
	mu       sync.Mutex
	refusals []refusal
	calls    int
}

func (s *scripted) Exchange(ctx context.Context, req *octostsv1.ExchangeRequest) (*octostsv1.ExchangeResponse, error) {
	s.mu.Lock()
	s.calls++
	var next *refusal
	if len(s.refusals) > 0 {
		next = &s.refusals[0]
		s.refusals = s.refusals[1:]
	}
	s.mu.Unlock()
	if next != nil {
		if next.retryAfter != "" {
			_ = grpc.SetTrailer(ctx, metadata.Pairs("retry-after", next.retryAfter))
		}
		return nil, status.Error(next.code, "overloaded")
	}
	return s.standIn.Exchange(ctx, req)
}

func (s *scripted) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// sleeps records the waits asked for; before runs first (a test cancels its context there).
type sleeps struct {
	waits  []time.Duration
	before func()
}

func (s *sleeps) sleep(ctx context.Context, d time.Duration) error {
	s.waits = append(s.waits, d)
	if s.before != nil {
		s.before()
	}
	return ctx.Err()
}

// loopbackClient serves srv on 127.0.0.1:0 (plaintext) and returns a client with a recording
// sleeper and a fixed jitter of 0.5.
func loopbackClient(t *testing.T, srv octostsv1.SecurityTokenServiceServer, rec *sleeps, opts ...Option) *Client {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	octostsv1.RegisterSecurityTokenServiceServer(s, srv)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	base := []Option{
		WithInsecure(), WithTokenSource(StaticToken(oidcToken)),
		func(o *options) { o.sleep = rec.sleep; o.rand = func() float64 { return 0.5 } },
	}
	c, err := New(lis.Addr().String(), append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func asError(t *testing.T, err error) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("want *Error, got %v", err)
	}
	return e
}

func TestUnavailableWaitsAtLeastRetryAfterThenSucceeds(t *testing.T) {
	srv := &scripted{refusals: []refusal{{codes.Unavailable, "1"}, {codes.Unavailable, ""}}}
	rec := &sleeps{}
	tok, err := loopbackClient(t, srv, rec).Exchange(ctx(t), "org/app", "deploy")
	if err != nil {
		t.Fatal(err)
	}
	if tok.Value != mintedToken || srv.count() != 3 {
		t.Fatalf("token %v after %d calls", tok, srv.count())
	}
	// The service's 1 s, not the 150 ms backoff; then the second backoff (400 ms cap, jitter 0.5).
	want := []time.Duration{time.Second, 300 * time.Millisecond}
	if len(rec.waits) != 2 || rec.waits[0] != want[0] || rec.waits[1] != want[1] {
		t.Fatalf("waited %v, want %v", rec.waits, want)
	}
}

func TestUnavailableIsRetriedUpToMaxAttempts(t *testing.T) {
	srv := &scripted{refusals: []refusal{{codes.Unavailable, ""}, {codes.Unavailable, ""}, {codes.Unavailable, ""}}}
	rec := &sleeps{}
	_, err := loopbackClient(t, srv, rec, WithRetry(RetryPolicy{MaxAttempts: 3})).Exchange(ctx(t), "org", "deploy")
	if e := asError(t, err); e.Code != codes.Unavailable || e.RetryAfter != 0 || strings.Contains(e.Error(), "retry_after") {
		t.Fatalf("want UNAVAILABLE without retry-after, got %v", e)
	}
	if srv.count() != 3 || len(rec.waits) != 2 {
		t.Fatalf("%d calls, waits %v", srv.count(), rec.waits)
	}
}

func TestResourceExhaustedWithRetryAfterIsRetriedOnce(t *testing.T) {
	srv := &scripted{refusals: []refusal{{codes.ResourceExhausted, "1"}}}
	rec := &sleeps{}
	if _, err := loopbackClient(t, srv, rec).Exchange(ctx(t), "org", "deploy"); err != nil {
		t.Fatal(err)
	}
	if srv.count() != 2 || len(rec.waits) != 1 || rec.waits[0] != time.Second {
		t.Fatalf("%d calls, waits %v", srv.count(), rec.waits)
	}

	// Twice in a row: the second answer is returned, with when to come back.
	srv = &scripted{refusals: []refusal{{codes.ResourceExhausted, "1"}, {codes.ResourceExhausted, "2"}}}
	rec = &sleeps{}
	_, err := loopbackClient(t, srv, rec).Exchange(ctx(t), "org", "deploy")
	e := asError(t, err)
	if e.Code != codes.ResourceExhausted || e.RetryAfter != 2*time.Second || !strings.HasSuffix(e.Error(), " retry_after=2s") {
		t.Fatalf("want RESOURCE_EXHAUSTED retry_after=2s, got %v", e)
	}
	if srv.count() != 2 || len(rec.waits) != 1 {
		t.Fatalf("%d calls, waits %v", srv.count(), rec.waits)
	}
}

func TestResourceExhaustedWithoutRetryAfterIsNotRetried(t *testing.T) {
	for _, value := range []string{"", "Wed, 21 Oct 2026 07:28:00 GMT", "1.5", "-1"} {
		srv := &scripted{refusals: []refusal{{codes.ResourceExhausted, value}}}
		rec := &sleeps{}
		_, err := loopbackClient(t, srv, rec).Exchange(ctx(t), "org", "deploy")
		if e := asError(t, err); e.Code != codes.ResourceExhausted || e.RetryAfter != 0 {
			t.Fatalf("retry-after %q: got %v", value, e)
		}
		if srv.count() != 1 || len(rec.waits) != 0 {
			t.Fatalf("retry-after %q: %d calls, waits %v", value, srv.count(), rec.waits)
		}
	}
}

func TestAWaitPastTheDeadlineIsReturnedAtOnce(t *testing.T) {
	// A GitHub rate limit for a minute: the policy's 20 s deadline cannot hold it.
	srv := &scripted{refusals: []refusal{{codes.ResourceExhausted, "60"}}}
	rec := &sleeps{}
	_, err := loopbackClient(t, srv, rec, WithRetry(RetryPolicy{Deadline: 20 * time.Second})).Exchange(ctx(t), "org", "deploy")
	if e := asError(t, err); e.Code != codes.ResourceExhausted || e.RetryAfter != time.Minute {
		t.Fatalf("want RESOURCE_EXHAUSTED after 60s, got %v", e)
	}
	if srv.count() != 1 || len(rec.waits) != 0 {
		t.Fatalf("%d calls, waits %v", srv.count(), rec.waits)
	}

	// The caller's context is the deadline when it is the earlier one (here 10 s, policy 30 s).
	srv = &scripted{refusals: []refusal{{codes.Unavailable, "15"}}}
	rec = &sleeps{}
	_, err = loopbackClient(t, srv, rec).Exchange(ctx(t), "org", "deploy")
	if e := asError(t, err); e.Code != codes.Unavailable || e.RetryAfter != 15*time.Second {
		t.Fatalf("want UNAVAILABLE after 15s, got %v", e)
	}
	if srv.count() != 1 || len(rec.waits) != 0 {
		t.Fatalf("%d calls, waits %v", srv.count(), rec.waits)
	}
}

func TestACancelledContextEndsTheWait(t *testing.T) {
	srv := &scripted{refusals: []refusal{{codes.Unavailable, "1"}}}
	c, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := &sleeps{before: cancel}
	_, err := loopbackClient(t, srv, rec).Exchange(c, "org", "deploy")
	if e := asError(t, err); e.Code != codes.Canceled {
		t.Fatalf("want CANCELED, got %v", e)
	}
	if srv.count() != 1 {
		t.Fatalf("%d calls after the cancel", srv.count())
	}
	// The real sleeper returns as soon as the context is done, however long the wait.
	if err := sleepCtx(c, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("sleepCtx on a cancelled context: %v", err)
	}
}

func TestDenialsAreNotRetried(t *testing.T) {
	for _, code := range []codes.Code{codes.PermissionDenied, codes.Unauthenticated, codes.InvalidArgument, codes.Internal, codes.DeadlineExceeded} {
		srv := &scripted{refusals: []refusal{{code, "1"}}}
		rec := &sleeps{}
		_, err := loopbackClient(t, srv, rec).Exchange(ctx(t), "org", "deploy")
		if e := asError(t, err); e.Code != code {
			t.Fatalf("want %v, got %v", code, e)
		}
		if srv.count() != 1 || len(rec.waits) != 0 {
			t.Fatalf("%v retried: %d calls", code, srv.count())
		}
	}
}

func TestConnectionRefusedIsRetried(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close() // nothing listens there now
	rec := &sleeps{}
	c, err := New(addr, WithInsecure(), WithTokenSource(StaticToken(oidcToken)), WithRetry(RetryPolicy{MaxAttempts: 2}),
		func(o *options) { o.sleep = rec.sleep })
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Exchange(ctx(t), "org", "deploy")
	if e := asError(t, err); e.Code != codes.Unavailable || strings.Contains(e.Error(), oidcToken) {
		t.Fatalf("want UNAVAILABLE, got %v", e)
	}
	if len(rec.waits) != 1 {
		t.Fatalf("waits %v", rec.waits)
	}
}

func TestParseRetryAfter(t *testing.T) {
	for value, want := range map[string]time.Duration{
		"1": time.Second, " 30 ": 30 * time.Second, "0": 0, "3600": time.Hour,
		"86400": time.Hour, "99999999999999999999999": time.Hour,
	} {
		if got, ok := parseRetryAfter(value); !ok || got != want {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v", value, got, ok, want)
		}
	}
	for _, value := range []string{"", " ", "1.5", "-1", "+1", "1s", "Wed, 21 Oct 2026 07:28:00 GMT"} {
		if got, ok := parseRetryAfter(value); ok {
			t.Errorf("parseRetryAfter(%q) = %v, want ignored", value, got)
		}
	}
}

func TestRetryPolicyDefaultsAndRefusals(t *testing.T) {
	if p, err := (RetryPolicy{}).withDefaults(); err != nil || p != DefaultRetryPolicy() {
		t.Fatalf("zero policy gives %+v, %v", p, err)
	}
	for _, p := range []RetryPolicy{{MaxAttempts: -1}, {Multiplier: 0.5}, {Deadline: -time.Second}} {
		if _, err := New("localhost:1", WithTokenSource(StaticToken("x")), WithRetry(p)); err == nil {
			t.Errorf("policy %+v accepted", p)
		}
	}
	// Equal jitter: half the capped backoff fixed, half random.
	p := DefaultRetryPolicy()
	for _, c := range []struct {
		retry int
		rnd   float64
		want  time.Duration
	}{{0, 0, 100 * time.Millisecond}, {0, 0.999999, 200 * time.Millisecond}, {2, 0.5, 600 * time.Millisecond}, {10, 0, 2500 * time.Millisecond}} {
		if got := p.backoff(c.retry, c.rnd).Round(time.Millisecond); got != c.want {
			t.Errorf("backoff(%d, %v) = %v, want %v", c.retry, c.rnd, got, c.want)
		}
	}
}
