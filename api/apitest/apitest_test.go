package apitest_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/levyhq/levy/api/apitest"
)

// recorder is a testing.TB that keeps the failures it is told of.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

// The checker fails a test on an undescribed answer, not on a described
// one.
func TestHandlerFailsOnWhatTheDescriptionDoesNotAllow(t *testing.T) {
	tests := []struct {
		name, method, path, body string
		status                   int
		contentType, answer      string
		wantError                string // "": none
	}{
		{"described", "GET", "/healthz", "", 200, "text/plain", "ok\n", ""},
		{"wrong body", "GET", "/healthz", "", 200, "text/plain", "fine\n", "does not match"},
		{"undescribed status", "GET", "/readyz", "", 418, "text/plain", "teapot", "does not match"},
		{"consumer missing a field", "GET", "/v1/consumers/acme", "", 200, "application/json", `{"id":"acme","plan":"free"}`, "does not match"},
		{"consumer", "GET", "/v1/consumers/acme", "", 200, "application/json", `{"id":"acme","plan":"free","status":"active"}`, ""},
		{"invalid request allowed", "PUT", "/v1/consumers/acme", `{"plan":7}`, 200, "application/json", `{"id":"acme","plan":"free","status":"active"}`, "calls the request invalid"},
		{"no such route, 200", "GET", "/v2/nothing", "", 200, "text/plain", "x", "no documented route"},
		{"no such route, 404", "GET", "/v2/nothing", "", 404, "text/plain", "x", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{TB: t}
			h := apitest.Handler(rec, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", tt.contentType)
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.answer)
			}))
			req := httptest.NewRequest(tt.method, tt.path, strings.NewReader(tt.body))
			req.Header.Set("Content-Type", "application/json")
			h.ServeHTTP(httptest.NewRecorder(), req)
			got := strings.Join(rec.errors, "\n")
			if tt.wantError == "" && got != "" || tt.wantError != "" && !strings.Contains(got, tt.wantError) {
				t.Fatalf("errors %q, want %q", got, tt.wantError)
			}
		})
	}
}
