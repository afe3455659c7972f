package console_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// Without the session's CSRF token, from another site, or without a
// session, no change is made; a wrong token does not sign in.
func TestConsoleRefusesChangesWithoutSessionCSRFOrSameOrigin(t *testing.T) {
	srv := startLevy(t)
	base := "http://" + srv.HTTPAddr()
	adminCall(t, base, "PUT", "/v1/consumers/acme", map[string]any{"plan": "pro"}, nil)
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	post := func(path string, form url.Values, cookie *http.Cookie, site string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("POST", base+path, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if site != "" {
			req.Header.Set("Sec-Fetch-Site", site)
		}
		if cookie != nil {
			req.AddCookie(cookie)
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := post("/console/sign-in", url.Values{"token": {"wrong"}}, nil, ""); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a wrong token: %d", resp.StatusCode)
	}
	resp := post("/console/sign-in", url.Values{"token": {token}}, nil, "same-origin")
	var session *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "levy_console" && c.HttpOnly && c.SameSite == http.SameSiteStrictMode {
			session = c
		}
	}
	if resp.StatusCode != http.StatusSeeOther || session == nil {
		t.Fatalf("sign-in: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	change := url.Values{"plan": {"free"}}
	tests := []struct {
		name   string
		form   url.Values
		cookie *http.Cookie
		site   string
		want   int
	}{
		{"no session", change, nil, "same-origin", http.StatusUnauthorized},
		{"no CSRF token", change, session, "same-origin", http.StatusForbidden},
		{"a wrong CSRF token", url.Values{"plan": {"free"}, "csrf": {"x"}}, session, "same-origin", http.StatusForbidden},
		{"another site", change, session, "cross-site", http.StatusForbidden},
		{"a forged session", change, &http.Cookie{Name: "levy_console", Value: session.Value[:len(session.Value)-2] + "AA"}, "", http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if resp := post("/console/consumers/acme/plan", tt.form, tt.cookie, tt.site); resp.StatusCode != tt.want {
				t.Errorf("%d, want %d", resp.StatusCode, tt.want)
			}
		})
	}
	var c struct {
		Plan string `json:"plan"`
	}
	adminCall(t, base, "GET", "/v1/consumers/acme", nil, &c)
	if c.Plan != "pro" {
		t.Fatalf("a refused change changed the plan to %s", c.Plan)
	}
	get, err := noRedirect.Get(base + "/console/consumers")
	if err != nil {
		t.Fatal(err)
	}
	get.Body.Close()
	if get.StatusCode != http.StatusSeeOther || get.Header.Get("Location") != "/console/sign-in" || get.Header.Get("Content-Security-Policy") == "" {
		t.Fatalf("the list without a session: %d to %q", get.StatusCode, get.Header.Get("Location"))
	}
}
