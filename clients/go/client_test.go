package octosts

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/octo-sts/octo-sts-python/clients/go/octostsv1"
)

const (
	oidcToken   = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
	mintedToken = "ghs_goStandInToken"
)

var expiresAt = time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC)

type standIn struct {
	octostsv1.UnimplementedSecurityTokenServiceServer
	deny     bool
	lastAuth string
	lastReq  *octostsv1.ExchangeRequest
}

func (s *standIn) Exchange(ctx context.Context, req *octostsv1.ExchangeRequest) (*octostsv1.ExchangeResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("authorization"); len(v) > 0 {
		s.lastAuth = v[0]
	}
	s.lastReq = req
	if s.lastAuth != "Bearer "+oidcToken {
		return nil, status.Error(codes.Unauthenticated, "token expired")
	}
	if s.deny {
		st, _ := status.New(codes.PermissionDenied, "no trust policy matched").WithDetails(
			&errdetails.ErrorInfo{Reason: "policy_denied", Metadata: map[string]string{"request_id": "r-7"}})
		return nil, st.Err()
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-request-id", "r-ok"))
	return &octostsv1.ExchangeResponse{
		Token: mintedToken, AccessToken: mintedToken, TokenType: "Bearer", ExpiresIn: 3600,
		ExpiresAt: timestamppb.New(expiresAt), Permissions: map[string]string{"contents": "read"},
		Repositories: []string{"app"},
	}, nil
}

func bufClient(t *testing.T, srv *standIn, opts ...Option) *Client {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer()
	octostsv1.RegisterSecurityTokenServiceServer(s, srv)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	dialer := grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) })
	c, err := New("passthrough:///bufnet", append([]Option{WithInsecure(), WithDialOptions(dialer)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestExchangeSendsBearerAndReturnsToken(t *testing.T) {
	srv := &standIn{}
	c := bufClient(t, srv, WithTokenSource(StaticToken(oidcToken)), WithAudience("sts.example"))
	tok, err := c.Exchange(ctx(t), "org/app", "deploy")
	if err != nil {
		t.Fatal(err)
	}
	if tok.Value != mintedToken || !tok.ExpiresAt.Equal(expiresAt) || tok.Permissions["contents"] != "read" ||
		len(tok.Repositories) != 1 || tok.RequestID != "r-ok" {
		t.Fatalf("unexpected token %v", tok)
	}
	if srv.lastReq.GetScope() != "org/app" || srv.lastReq.GetIdentity() != "deploy" || srv.lastReq.GetAudience() != "sts.example" {
		t.Fatalf("unexpected request %v", srv.lastReq)
	}
	for _, s := range []string{fmt.Sprint(tok), fmt.Sprintf("%v %+v %#v", *tok, *tok, *tok)} {
		if strings.Contains(s, mintedToken) {
			t.Fatalf("token leaked in %q", s)
		}
	}
}

func TestExchangeScopesSendsOneScopeAsScopeAndSeveralAsScopes(t *testing.T) {
	srv := &standIn{}
	c := bufClient(t, srv, WithTokenSource(StaticToken(oidcToken)))
	if _, err := c.ExchangeScopes(ctx(t), []string{"org/app", "org/lib"}, "deploy"); err != nil {
		t.Fatal(err)
	}
	if srv.lastReq.GetScope() != "" || strings.Join(srv.lastReq.GetScopes(), ",") != "org/app,org/lib" {
		t.Fatalf("several scopes sent as %v", srv.lastReq)
	}
	if _, err := c.ExchangeScopes(ctx(t), []string{"org"}, "deploy"); err != nil {
		t.Fatal(err)
	}
	if srv.lastReq.GetScope() != "org" || len(srv.lastReq.GetScopes()) != 0 {
		t.Fatalf("one scope sent as %v", srv.lastReq)
	}
	_, err := c.ExchangeScopes(ctx(t), nil, "deploy")
	var e *Error
	if !errors.As(err, &e) || e.Code != codes.InvalidArgument {
		t.Fatalf("want InvalidArgument for no scope, got %v", err)
	}
}

func TestExchangeDeniedCarriesReason(t *testing.T) {
	c := bufClient(t, &standIn{deny: true}, WithTokenSource(StaticToken(oidcToken)))
	_, err := c.Exchange(ctx(t), "org", "deploy")
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("want *Error, got %v", err)
	}
	if e.Code != codes.PermissionDenied || e.Reason != "policy_denied" || e.RequestID != "r-7" {
		t.Fatalf("unexpected error %+v", e)
	}
}

func TestExchangeWrongTokenIsUnauthenticated(t *testing.T) {
	c := bufClient(t, &standIn{}, WithTokenSource(StaticToken("other.jwt.x")))
	_, err := c.Exchange(ctx(t), "org", "deploy")
	var e *Error
	if !errors.As(err, &e) || e.Code != codes.Unauthenticated {
		t.Fatalf("want UNAUTHENTICATED, got %v", err)
	}
}

func TestFileTokenIsReReadAndBadTokensRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte("stale.jwt.x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := &standIn{}
	c := bufClient(t, srv, WithTokenSource(FileToken(path)))
	if _, err := c.Exchange(ctx(t), "org", "deploy"); err == nil {
		t.Fatal("stale token accepted")
	}
	if err := os.WriteFile(path, []byte(oidcToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exchange(ctx(t), "org", "deploy"); err != nil {
		t.Fatalf("rotated token not picked up: %v", err)
	}
	bad := bufClient(t, srv, WithTokenSource(StaticToken("a b")))
	if _, err := bad.Exchange(ctx(t), "org", "deploy"); err == nil {
		t.Fatal("token with whitespace sent")
	}
}

func TestNewRequiresTokenSource(t *testing.T) {
	if _, err := New("localhost:1"); err == nil {
		t.Fatal("want error without token source")
	}
	if _, err := New("localhost:1", WithTokenSource(StaticToken("x")), WithCAFile("/does/not/exist")); err == nil {
		t.Fatal("want error for missing CA file")
	}
}

// TestTLSWithCAFile runs a real TLS gRPC server on 127.0.0.1:0 with a throw-away CA.
func TestTLSWithCAFile(t *testing.T) {
	caPEM, serverCert := testPKI(t)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{serverCert}, MinVersion: tls.VersionTLS12})))
	octostsv1.RegisterSecurityTokenServiceServer(s, &standIn{})
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	target := fmt.Sprintf("localhost:%d", lis.Addr().(*net.TCPAddr).Port)

	c, err := New(target, WithCAFile(caFile), WithTokenSource(StaticToken(oidcToken)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if tok, err := c.Exchange(ctx(t), "org", "deploy"); err != nil || tok.Value != mintedToken {
		t.Fatalf("TLS exchange failed: %v", err)
	}

	// Without the CA the handshake must fail (system roots do not trust it).
	untrusted, err := New(target, WithTokenSource(StaticToken(oidcToken)))
	if err != nil {
		t.Fatal(err)
	}
	defer untrusted.Close()
	short, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := untrusted.Exchange(short, "org", "deploy"); err == nil {
		t.Fatal("untrusted server accepted")
	}
}

func TestBearerRefusesPlaintextWithoutWithInsecure(t *testing.T) {
	// Forcing a plaintext transport while the client believes TLS is required must not
	// send the token: gRPC refuses the combination (at dial time or at the call).
	lis := bufconn.Listen(1 << 20)
	srv := &standIn{}
	s := grpc.NewServer()
	octostsv1.RegisterSecurityTokenServiceServer(s, srv)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	dialer := grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) })
	c, err := New("passthrough:///bufnet", WithTokenSource(StaticToken(oidcToken)),
		WithDialOptions(dialer, grpc.WithTransportCredentials(insecure.NewCredentials())))
	if err == nil {
		defer c.Close()
		_, err = c.Exchange(ctx(t), "org", "deploy")
	}
	if err == nil || srv.lastAuth != "" {
		t.Fatal("token sent over plaintext without WithInsecure")
	}
}

func testPKI(t *testing.T) ([]byte, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
