// Package octosts is a small typed client for the Octo STS gRPC API.
//
//	c, err := octosts.New("sts.example.com:443",
//		octosts.WithCAFile("ca.pem"),
//		octosts.WithTokenSource(octosts.FileToken("/var/run/secrets/tokens/octo-sts")))
//	tok, err := c.Exchange(ctx, "my-org/my-repo", "deploy")
//	use(tok.Value) // fmt never prints the token: Token implements String and GoString
//
// The generated packages octostsv1 (the Octo STS API) and chainguardoidc (the
// wire-compatible chainguard.platform.oidc API) can be used directly too.
package octosts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/octo-sts/octo-sts-python/clients/go/octostsv1"
)

// maxResponseBytes caps what the client accepts: a token and its permissions fit in a few KiB.
const maxResponseBytes = 256 * 1024

// TokenSource returns the workload's OIDC token; it is called for every RPC so rotated
// tokens (Kubernetes projected service-account tokens) are picked up.
type TokenSource func(ctx context.Context) (string, error)

// StaticToken always returns token.
func StaticToken(token string) TokenSource {
	return func(context.Context) (string, error) { return token, nil }
}

// FileToken re-reads the token file on each call.
func FileToken(path string) TokenSource {
	return func(context.Context) (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("octosts: read token file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
}

// Token is a minted GitHub token. Its String and GoString methods hide Value.
type Token struct {
	Value        string
	ExpiresAt    time.Time
	Permissions  map[string]string
	Repositories []string
	RequestID    string
}

func (t Token) String() string {
	return fmt.Sprintf("octosts.Token{Value: <redacted>, ExpiresAt: %s, Permissions: %v, Repositories: %v}",
		t.ExpiresAt.Format(time.RFC3339), t.Permissions, t.Repositories)
}

// GoString keeps %#v from printing the token.
func (t Token) GoString() string { return t.String() }

// Error is a failed exchange: the gRPC code, the server's message and, when the server
// sent a google.rpc.ErrorInfo, its reason and request id. RetryAfter is how long the service
// asked the caller to wait before trying again (its retry-after trailer, sent with
// RESOURCE_EXHAUSTED and UNAVAILABLE); 0 when it did not say.
type Error struct {
	Code       codes.Code
	Message    string
	Reason     string
	RequestID  string
	RetryAfter time.Duration

	retryAfterSent bool // "retry-after: 0" is an answer too
}

func (e *Error) Error() string {
	s := fmt.Sprintf("octosts: %s: %s", e.Code, e.Message)
	if e.Reason != "" {
		s += " reason=" + e.Reason
	}
	if e.RequestID != "" {
		s += " request_id=" + e.RequestID
	}
	if e.retryAfterSent || e.RetryAfter > 0 {
		s += fmt.Sprintf(" retry_after=%gs", e.RetryAfter.Seconds())
	}
	return s
}

// Options configure New.
type options struct {
	caFile   string
	insecure bool
	source   TokenSource
	audience *string
	dialOpts []grpc.DialOption
	retry    RetryPolicy
	sleep    func(context.Context, time.Duration) error // tests record the waits instead
	rand     func() float64
}

// Option configures a Client.
type Option func(*options)

// WithCAFile trusts the PEM CA bundle at path instead of the system roots.
func WithCAFile(path string) Option { return func(o *options) { o.caFile = path } }

// WithInsecure uses plaintext (inside a service mesh only).
func WithInsecure() Option { return func(o *options) { o.insecure = true } }

// WithTokenSource sets where the OIDC bearer token comes from.
func WithTokenSource(s TokenSource) Option { return func(o *options) { o.source = s } }

// WithAudience asks the service to check this audience instead of its default.
func WithAudience(aud string) Option { return func(o *options) { o.audience = &aud } }

// WithDialOptions adds raw gRPC dial options (tests use a bufconn dialer).
func WithDialOptions(d ...grpc.DialOption) Option {
	return func(o *options) { o.dialOpts = append(o.dialOpts, d...) }
}

// Client calls octosts.v1.SecurityTokenService over one gRPC connection.
type Client struct {
	conn     *grpc.ClientConn
	sts      octostsv1.SecurityTokenServiceClient
	audience *string
	retry    RetryPolicy
	sleep    func(context.Context, time.Duration) error
	rand     func() float64
}

// bearer sends "authorization: Bearer <token>" on every RPC.
type bearer struct {
	source   TokenSource
	insecure bool
}

func (b bearer) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	tok, err := b.source(ctx)
	if err != nil {
		return nil, err
	}
	if tok == "" || strings.ContainsAny(tok, " \t\r\n") {
		return nil, errors.New("octosts: the OIDC token is empty or contains whitespace")
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

// RequireTransportSecurity refuses to send the token in clear text unless WithInsecure was chosen.
func (b bearer) RequireTransportSecurity() bool { return !b.insecure }

// New connects lazily to target ("host:port").
func New(target string, opts ...Option) (*Client, error) {
	o := options{sleep: sleepCtx, rand: defaultRand}
	for _, opt := range opts {
		opt(&o)
	}
	if o.source == nil {
		return nil, errors.New("octosts: a token source is required (WithTokenSource)")
	}
	retry, err := o.retry.withDefaults()
	if err != nil {
		return nil, err
	}
	dial := []grpc.DialOption{
		grpc.WithPerRPCCredentials(bearer{source: o.source, insecure: o.insecure}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxResponseBytes)),
	}
	if o.insecure {
		dial = append(dial, grpc.WithTransportCredentials(insecure.NewCredentials()))
	} else {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if o.caFile != "" {
			pem, err := os.ReadFile(o.caFile)
			if err != nil {
				return nil, fmt.Errorf("octosts: read CA file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("octosts: no certificates in CA file %s", o.caFile)
			}
			cfg.RootCAs = pool
		}
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	}
	conn, err := grpc.NewClient(target, append(dial, o.dialOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("octosts: %w", err)
	}
	return &Client{
		conn: conn, sts: octostsv1.NewSecurityTokenServiceClient(conn), audience: o.audience,
		retry: retry, sleep: o.sleep, rand: o.rand,
	}, nil
}

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Exchange trades the OIDC token for a GitHub token for scope ("owner" or "owner/repo")
// under the trust policy identity. Failures are *Error values; callers set deadlines on ctx.
// UNAVAILABLE is retried, and RESOURCE_EXHAUSTED once when the service's retry-after fits
// in the deadline (WithRetry, retry.go); otherwise the *Error carries RetryAfter.
func (c *Client) Exchange(ctx context.Context, scope, identity string) (*Token, error) {
	return c.ExchangeScopes(ctx, []string{scope}, identity)
}

// ExchangeScopes trades the OIDC token for one GitHub token covering several repositories
// of one owner ("owner/repo" each): granted only if identity's policy in each repository
// allows the caller, with the permissions all of them grant. One scope is Exchange.
func (c *Client) ExchangeScopes(ctx context.Context, scopes []string, identity string) (*Token, error) {
	if len(scopes) == 0 {
		return nil, &Error{Code: codes.InvalidArgument, Message: "no scope given"}
	}
	req := &octostsv1.ExchangeRequest{Identity: identity, Audience: c.audience}
	// One scope goes in Scope, which every server version reads; several in Scopes.
	if len(scopes) == 1 {
		req.Scope = scopes[0]
	} else {
		req.Scopes = scopes
	}
	budget := newAttempts(ctx, c.retry)
	for attempt := 0; ; attempt++ {
		timeout, err := budget.timeout()
		if err != nil {
			return nil, err
		}
		tok, e := c.exchangeOnce(ctx, req, timeout)
		if e == nil {
			return tok, nil
		}
		delay, again := budget.delay(attempt, e, c.rand())
		if !again {
			return nil, e
		}
		if err := c.sleep(ctx, delay); err != nil {
			return nil, contextError(err)
		}
	}
}

// exchangeOnce is one call, within timeout.
func (c *Client) exchangeOnce(ctx context.Context, req *octostsv1.ExchangeRequest, timeout time.Duration) (*Token, *Error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var header, trailer metadata.MD
	resp, err := c.sts.Exchange(ctx, req, grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil {
		e := toError(err)
		e.RetryAfter, e.retryAfterSent = retryAfterIn(trailer, header)
		return nil, e
	}
	tok := resp.GetToken()
	if tok == "" {
		tok = resp.GetAccessToken()
	}
	if tok == "" {
		return nil, &Error{Code: codes.Internal, Message: "the response carries no token"}
	}
	expires := resp.GetExpiresAt().AsTime()
	if resp.GetExpiresAt() == nil {
		expires = time.Now().Add(time.Duration(resp.GetExpiresIn()) * time.Second)
	}
	t := &Token{Value: tok, ExpiresAt: expires, Permissions: resp.GetPermissions(), Repositories: resp.GetRepositories()}
	if ids := header.Get("x-request-id"); len(ids) > 0 {
		t.RequestID = ids[0]
	}
	return t, nil
}

func toError(err error) *Error {
	st := status.Convert(err)
	e := &Error{Code: st.Code(), Message: st.Message()}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			e.Reason = info.GetReason()
			e.RequestID = info.GetMetadata()["request_id"]
		}
	}
	return e
}
