// Package chainguardsdk runs the real chainguard.dev/sdk client against a running Octo STS.
//
// tests/e2e/test_chainguard_sdk_live.py starts the stack (Envoy over TLS in front of real
// replicas, the dev issuer, the GitHub emulator), builds this test binary and runs it with
// OCTO_STS_SDK_* in the environment and SSL_CERT_FILE pointing at the stack's CA (the SDK
// trusts the system roots only). Without them every test skips and says why; the driver
// checks each test passed, so a skip is never mistaken for a pass.
package chainguardsdk

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"chainguard.dev/sdk/octosts"
	oidc "chainguard.dev/sdk/proto/platform/oidc/v1"
	"chainguard.dev/sdk/sts"
)

type live struct {
	gateway, direct, domain, scope, identity, token, expired, github string
}

func load(t *testing.T) live {
	t.Helper()
	get := func(name string) string {
		v := os.Getenv("OCTO_STS_SDK_" + name)
		if v == "" {
			t.Skipf("OCTO_STS_SDK_%s not set: run through tests/e2e/test_chainguard_sdk_live.py", name)
		}
		return v
	}
	return live{
		gateway: get("GATEWAY"), direct: get("DIRECT"), domain: get("DOMAIN"),
		scope: get("SCOPE"), identity: get("IDENTITY"), token: get("TOKEN"),
		expired: get("EXPIRED_TOKEN"), github: get("GITHUB"),
	}
}

func timeout(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// endpoints: through Envoy over TLS (gRPC negotiated with ALPN h2) and straight to a replica.
func (env live) endpoints() map[string]string {
	return map[string]string{"envoy": env.gateway, "direct": env.direct}
}

// usable fails unless the GitHub emulator accepts tok for the scope's repository.
func (env live) usable(t *testing.T, tok string) {
	t.Helper()
	if !strings.HasPrefix(tok, "ghs_") {
		t.Fatalf("not a GitHub installation token (%d characters)", len(tok))
	}
	req, err := http.NewRequest(http.MethodGet, env.github+"/repos/"+env.scope+"/contents/README.md", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("GitHub emulator: %v", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the GitHub emulator answered %d to the minted token", resp.StatusCode)
	}
}

func checkPair(t *testing.T, env live, pair sts.TokenPair, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("Exchange: %v", err)
	}
	// RawToken.expiry is filled: GitHub's one-hour installation token lifetime.
	if left := time.Until(pair.Expiry); left < 50*time.Minute || left > 61*time.Minute {
		t.Fatalf("expiry %v is not about an hour away", pair.Expiry)
	}
	if pair.RefreshToken != "" {
		t.Fatalf("unexpected refresh token")
	}
	env.usable(t, pair.AccessToken)
}

// The audiences existing callers send: the service domain (the docs' example), "" (sts.New(ep, ""))
// and the identity (what octosts.NewTokenSourceFromValues passes as the audience).
func (env live) audiences() []string { return []string{env.domain, "", env.identity} }

func TestSDKExchangeGRPC(t *testing.T) {
	env := load(t)
	for name, endpoint := range env.endpoints() {
		for _, aud := range env.audiences() {
			t.Run(name+"/aud="+aud, func(t *testing.T) {
				xchg := sts.New(endpoint, aud, sts.WithScope(env.scope), sts.WithIdentity(env.identity))
				pair, err := xchg.Exchange(timeout(t), env.token)
				checkPair(t, env, pair, err)
			})
		}
	}
}

func TestSDKRawClientWithOnlyScopes(t *testing.T) {
	env := load(t)
	for name, endpoint := range env.endpoints() {
		t.Run(name, func(t *testing.T) {
			ctx := timeout(t)
			clients, err := oidc.NewClients(ctx, endpoint, "Bearer "+env.token)
			if err != nil {
				t.Fatalf("NewClients: %v", err)
			}
			defer clients.Close()
			raw, err := clients.STS().Exchange(ctx, &oidc.ExchangeRequest{
				Scopes: []string{env.scope}, Identity: env.identity,
			})
			if err != nil {
				t.Fatalf("Exchange: %v", err)
			}
			if raw.GetExpiry() == nil || !raw.GetExpiry().AsTime().After(time.Now()) {
				t.Fatalf("RawToken.expiry missing or past")
			}
			env.usable(t, raw.GetToken())
		})
	}
}

func TestSDKHTTP1Downgrade(t *testing.T) {
	env := load(t)
	for _, aud := range env.audiences() {
		t.Run("aud="+aud, func(t *testing.T) {
			xchg := sts.NewHTTP1DowngradeExchanger(env.gateway, aud,
				sts.WithScope(env.scope), sts.WithIdentity(env.identity), sts.WithCapabilities("a", "b"))
			pair, err := xchg.Exchange(timeout(t), env.token)
			checkPair(t, env, pair, err)
		})
	}
	t.Run("ExchangePair", func(t *testing.T) {
		pair, err := sts.ExchangePair(timeout(t), env.gateway, env.domain, env.token,
			sts.WithScope(env.scope), sts.WithIdentity(env.identity), sts.WithHTTP1Downgrade())
		checkPair(t, env, pair, err)
	})
}

// The octosts package's token source, with the exchanger NewTokenSourceFromValues builds
// (its own constructor is bound to octo-sts.dev and Google ID tokens).
func TestSDKOctoSTSTokenSource(t *testing.T) {
	env := load(t)
	xchg := sts.New(env.gateway, env.identity, sts.WithScope(env.scope), sts.WithIdentity(env.identity))
	source := octosts.NewTokenSourceContext(timeout(t),
		oauth2.StaticTokenSource(&oauth2.Token{AccessToken: env.token}), xchg)
	tok, err := source.Token()
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	if time.Until(tok.Expiry) < 50*time.Minute {
		t.Fatalf("the token source did not get the expiry (it defaults to 20 minutes)")
	}
	env.usable(t, tok.AccessToken)
}

// grpcCode is the gRPC status of err; the SDK returns it unwrapped.
func grpcCode(t *testing.T, err error) codes.Code {
	t.Helper()
	if err == nil {
		t.Fatalf("the exchange succeeded")
	}
	s, ok := status.FromError(err)
	if !ok {
		t.Fatalf("not a gRPC status: %v", err)
	}
	return s.Code()
}

// httpError checks the HTTP1 exchanger's error, "<status line>: <body>", whose body must be the
// JSON {"code": <gRPC code>, "message": ...} every error answer of the gateway has.
func httpError(t *testing.T, err error, statusLine string, code codes.Code) {
	t.Helper()
	if err == nil {
		t.Fatalf("the exchange succeeded")
	}
	body, found := strings.CutPrefix(err.Error(), statusLine+": ")
	var answer struct {
		Code    codes.Code `json:"code"`
		Message string     `json:"message"`
	}
	if !found || json.Unmarshal([]byte(body), &answer) != nil || answer.Code != code || answer.Message == "" {
		t.Fatalf("want %s with a JSON body of code %d, got %q", statusLine, code, err)
	}
}

func TestSDKWrongIdentityIsPermissionDenied(t *testing.T) {
	env := load(t)
	for name, endpoint := range env.endpoints() {
		t.Run(name, func(t *testing.T) {
			_, err := sts.New(endpoint, env.domain, sts.WithScope(env.scope),
				sts.WithIdentity("no-such-policy")).Exchange(timeout(t), env.token)
			if got := grpcCode(t, err); got != codes.PermissionDenied {
				t.Fatalf("want PermissionDenied, got %v (%v)", got, err)
			}
		})
	}
	t.Run("http1", func(t *testing.T) {
		_, err := sts.NewHTTP1DowngradeExchanger(env.gateway, env.domain, sts.WithScope(env.scope),
			sts.WithIdentity("no-such-policy")).Exchange(timeout(t), env.token)
		httpError(t, err, "403 Forbidden", codes.PermissionDenied)
	})
}

func TestSDKExpiredTokenIsUnauthenticated(t *testing.T) {
	env := load(t)
	for name, endpoint := range env.endpoints() {
		t.Run(name, func(t *testing.T) {
			_, err := sts.New(endpoint, env.domain, sts.WithScope(env.scope),
				sts.WithIdentity(env.identity)).Exchange(timeout(t), env.expired)
			if got := grpcCode(t, err); got != codes.Unauthenticated {
				t.Fatalf("want Unauthenticated, got %v (%v)", got, err)
			}
			if strings.Contains(err.Error(), env.expired) {
				t.Fatalf("the error shows the OIDC token")
			}
		})
	}
	t.Run("http1", func(t *testing.T) {
		_, err := sts.NewHTTP1DowngradeExchanger(env.gateway, env.domain, sts.WithScope(env.scope),
			sts.WithIdentity(env.identity)).Exchange(timeout(t), env.expired)
		httpError(t, err, "401 Unauthorized", codes.Unauthenticated)
		if strings.Contains(err.Error(), env.expired) {
			t.Fatalf("the error shows the OIDC token")
		}
	})
}

// Several different scopes are refused, not narrowed to one (docs/compatibility.md).
func TestSDKSeveralScopesAreInvalidArgument(t *testing.T) {
	env := load(t)
	other := strings.Split(env.scope, "/")[0] + "/other"
	_, err := sts.New(env.gateway, env.domain, sts.WithScope(env.scope, other),
		sts.WithIdentity(env.identity)).Exchange(timeout(t), env.token)
	if got := grpcCode(t, err); got != codes.InvalidArgument {
		t.Fatalf("want InvalidArgument, got %v (%v)", got, err)
	}
	_, err = sts.NewHTTP1DowngradeExchanger(env.gateway, env.domain, sts.WithScope(env.scope, other),
		sts.WithIdentity(env.identity)).Exchange(timeout(t), env.token)
	httpError(t, err, "400 Bad Request", codes.InvalidArgument)
}
