package octosts

// Live tests against a running stack (Envoy over TLS in front of real replicas).
// tests/e2e/test_clients_live.py starts the stack and runs `go test -run Live -v ./...` with
// OCTO_STS_LIVE_{ENDPOINT,CA,SCOPE,SCOPES,IDENTITY,TOKEN,DENIED_TOKEN,GITHUB} (see the TypeScript
// live test for their meaning). Without them the tests skip and say why; the driver checks
// they passed, so a skip is never mistaken for a pass.

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/octo-sts/octo-sts-python/clients/go/chainguardoidc"
)

type liveEnv struct {
	target, ca, scope, identity, token, denied, github string
	// Several repositories the allowed token's identity may have in one token (comma-separated).
	scopes []string
}

func loadLive(t *testing.T) liveEnv {
	t.Helper()
	get := func(name string) string {
		v := os.Getenv("OCTO_STS_LIVE_" + name)
		if v == "" {
			t.Skipf("OCTO_STS_LIVE_%s not set: run through tests/e2e/test_clients_live.py (it starts the stack)", name)
		}
		return v
	}
	endpoint, err := url.Parse(get("ENDPOINT"))
	if err != nil || endpoint.Scheme != "https" {
		t.Fatalf("OCTO_STS_LIVE_ENDPOINT must be an https URL")
	}
	return liveEnv{
		target: endpoint.Host, ca: get("CA"), scope: get("SCOPE"), identity: get("IDENTITY"),
		token: get("TOKEN"), denied: get("DENIED_TOKEN"), github: get("GITHUB"),
		scopes: strings.Split(get("SCOPES"), ","),
	}
}

func liveClient(t *testing.T, env liveEnv, token string) *Client {
	t.Helper()
	c, err := New(env.target, WithCAFile(env.ca), WithTokenSource(StaticToken(token)))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func githubStatus(t *testing.T, env liveEnv, token string) int {
	t.Helper()
	return githubStatusIn(t, env, token, env.scope)
}

func githubStatusIn(t *testing.T, env liveEnv, token, repo string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, env.github+"/repos/"+repo+"/contents/README.md", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("GitHub API: %v", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode
}

func TestLiveExchangeOverTLS(t *testing.T) {
	env := loadLive(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tok, err := liveClient(t, env, env.token).Exchange(ctx, env.scope, env.identity)
	if err != nil {
		t.Fatalf("Exchange: %v", err)
	}
	if !strings.HasPrefix(tok.Value, "ghs_") || !tok.ExpiresAt.After(time.Now()) || len(tok.Repositories) == 0 {
		t.Fatalf("unexpected token: %v", tok)
	}
	if tok.RequestID == "" {
		t.Errorf("no request id from the gateway")
	}
	if got := githubStatus(t, env, tok.Value); got != http.StatusOK {
		t.Fatalf("GitHub answered %d with the minted token", got)
	}
}

func TestLiveDeniedCarriesReasonAndRequestID(t *testing.T) {
	env := loadLive(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := liveClient(t, env, env.denied).Exchange(ctx, env.scope, env.identity)
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("want *Error, got %v", err)
	}
	if e.Code != codes.PermissionDenied || e.Reason != "permission_denied" {
		t.Fatalf("want PermissionDenied/permission_denied, got %v", e)
	}
	if !regexp.MustCompile(`^[0-9a-f-]{36}$`).MatchString(e.RequestID) {
		t.Fatalf("request id %q is not a UUID", e.RequestID)
	}
	if strings.Contains(e.Error(), env.denied) {
		t.Fatalf("the error shows the OIDC token")
	}
}

func TestLiveChainguardServiceNames(t *testing.T) {
	env := loadLive(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := liveClient(t, env, env.token)
	raw, err := chainguardoidc.NewSecurityTokenServiceClient(c.conn).Exchange(ctx,
		&chainguardoidc.ExchangeRequest{Scope: env.scope, Identity: env.identity})
	if err != nil {
		t.Fatalf("chainguard Exchange: %v", toError(err))
	}
	if got := githubStatus(t, env, raw.GetToken()); got != http.StatusOK {
		t.Fatalf("GitHub answered %d with the minted token", got)
	}
}

func TestLiveSeveralRepositoriesInOneToken(t *testing.T) {
	env := loadLive(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tok, err := liveClient(t, env, env.token).ExchangeScopes(ctx, env.scopes, env.identity)
	if err != nil {
		t.Fatalf("ExchangeScopes: %v", err)
	}
	if len(tok.Repositories) != len(env.scopes) {
		t.Fatalf("token for %v covers %v", env.scopes, tok.Repositories)
	}
	for _, scope := range env.scopes {
		if got := githubStatusIn(t, env, tok.Value, scope); got != http.StatusOK {
			t.Fatalf("GitHub answered %d in %s with the minted token", got, scope)
		}
	}
	_, err = liveClient(t, env, env.denied).ExchangeScopes(ctx, env.scopes, env.identity)
	var e *Error
	if !errors.As(err, &e) || e.Code != codes.PermissionDenied {
		t.Fatalf("want PermissionDenied for the denied token, got %v", err)
	}
}
