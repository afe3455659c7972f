package envoyclient

import (
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/levyhq/levy/pkg/envoyclient/envoytest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func serve(t *testing.T, register func(*grpc.Server)) *grpc.ClientConn {
	return envoytest.Loopback(t, register)
}

// stoppedServerConn returns a client connection to an address nothing listens on.
func stoppedServerConn(t *testing.T) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// patience is the call timeout of tests that are not about timeouts, long enough for -race on
// a loaded machine.
const patience = 10 * time.Second

// patientRL gives cfg a long timeout, so that only the tests about timeouts see one.
func patientRL(cfg RateLimitConfig) RateLimitConfig {
	cfg.Timeout = patience
	return cfg
}

// patientAuthz gives cfg a long timeout, so that only the tests about timeouts see one.
func patientAuthz(cfg AuthzConfig) AuthzConfig {
	cfg.Timeout = patience
	return cfg
}

func TestHeadersAreCaseInsensitive(t *testing.T) {
	h := Headers{{Name: "x-a", Value: "1"}, {Name: "x-b", Value: "2"}, {Name: "x-a", Value: "3"}}
	tests := []struct {
		give       string
		wantGet    string
		wantValues []string
		wantHas    bool
	}{
		{give: "X-A", wantGet: "1", wantValues: []string{"1", "3"}, wantHas: true},
		{give: "x-b", wantGet: "2", wantValues: []string{"2"}, wantHas: true},
		{give: "x-c", wantGet: "", wantValues: nil, wantHas: false},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			if got := h.Get(tt.give); got != tt.wantGet {
				t.Errorf("Get = %q, want %q", got, tt.wantGet)
			}
			if got := h.Values(tt.give); !equalStrings(got, tt.wantValues) {
				t.Errorf("Values = %q, want %q", got, tt.wantValues)
			}
			if got := h.Has(tt.give); got != tt.wantHas {
				t.Errorf("Has = %v, want %v", got, tt.wantHas)
			}
		})
	}
}

func TestSanitizeUTF8ReplacesInvalidBytes(t *testing.T) {
	tests := []struct {
		give string
		want string
	}{
		{give: "plain", want: "plain"},
		{give: "café", want: "café"},
		{give: "caf\xe9", want: "caf!"},
		{give: "\xff\xfeok", want: "!!ok"},
		{give: "a\xc3", want: "a!"},
		{give: "\xed\xa0\x80", want: "!!!"}, // a surrogate is not structurally valid
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := sanitizeUTF8(tt.give); got != tt.want {
				t.Errorf("sanitizeUTF8(%q) = %q, want %q", tt.give, got, tt.want)
			}
		})
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
