package portal_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/api/apitest"
	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/localstore"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/portal"
	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var hasher = apikey.NewHasher(nil)

// clock is a settable clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// env is a portal over a local store with consumers a (plan pro) and b
// (plan free), each with one key.
type env struct {
	t        *testing.T
	clock    *clock
	keys     apikey.Store
	store    portal.Store
	settings portal.Settings
	mu       sync.Mutex
	h        *portal.Handler
	url      string
	// keyA and keyB are the consumers' keys' ids; secretA is a's key.
	keyA, keyB, secretA string
	// hist is the usage history the portal reads (the local store's).
	hist history.Store
}

func catalog(t *testing.T) *plan.Catalog {
	t.Helper()
	cat, err := plan.NewCatalog(
		&plan.Plan{Name: "pro", Model: plan.Tiered, Rate: &plan.Rate{Requests: 100, Per: time.Second, Burst: 200},
			Quota: &plan.Quota{Requests: 100000, Period: plan.Month, Enforcement: plan.Hard}},
		&plan.Plan{Name: "free", Model: plan.Freemium, Rate: &plan.Rate{Requests: 10, Per: time.Minute},
			Quota: &plan.Quota{Requests: 1000, Period: plan.Month, Enforcement: plan.Hard}},
		&plan.Plan{Name: "payg", Model: plan.PayG, Quota: &plan.Quota{Requests: 5000, Period: plan.Month, Enforcement: plan.Soft, Cap: 20000}},
	)
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

// fakeUsage reports fixed figures.
type fakeUsage struct{ used int64 }

func (u fakeUsage) Period(_ context.Context, c *apikey.Consumer) (portal.PeriodUsage, error) {
	return portal.PeriodUsage{Start: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), End: time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC),
		Used: u.used, Included: 100000}, nil
}

// newEnv starts a portal on store (nil: the local store's) behind the
// OpenAPI checker.
func newEnv(t *testing.T, store portal.Store, keys apikey.Store, opts ...func(*portal.Config)) *env {
	t.Helper()
	e := &env{t: t, clock: &clock{now: time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)}}
	if keys == nil {
		db, err := localstore.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		dir, err := db.Directory()
		if err != nil {
			t.Fatal(err)
		}
		keys = dir
		e.hist = db.History(history.DefaultRetention)
		if store == nil {
			store = db.Portal(e.clock.Now)
		}
	}
	e.keys, e.store = keys, store
	ctx := context.Background()
	for _, c := range []*apikey.Consumer{{ID: "a", Plan: "pro"}, {ID: "b", Plan: "free"}} {
		if err := keys.PutConsumer(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	ops := apikey.Ops{Store: keys, Hasher: func() apikey.Hasher { return hasher }}
	ka, secret, err := ops.Issue(ctx, "a", "", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	kb, _, err := ops.Issue(ctx, "b", "", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	e.keyA, e.keyB, e.secretA = ka.ID, kb.ID, secret
	srv := httptest.NewUnstartedServer(nil)
	e.url = "http://" + srv.Listener.Addr().String()
	e.settings = portal.Settings{Enabled: true, PublicURL: e.url, LinkTTL: 15 * time.Minute, SessionTTL: time.Hour,
		Plans: []portal.PlanOffer{{Plan: "free", Price: "Free", SelfServe: true}, {Plan: "pro", Price: "$49 / month"}, {Plan: "payg", SelfServe: true}}}
	cat := catalog(t)
	cfg := portal.Config{
		Store: store, Keys: keys,
		Directory: func() apikey.Directory { return keys },
		Catalog:   func() *plan.Catalog { return cat },
		Hasher:    func() apikey.Hasher { return hasher },
		Settings: func() portal.Settings {
			e.mu.Lock()
			defer e.mu.Unlock()
			return e.settings
		},
		Usage: fakeUsage{used: 25000},
		History: func() *history.Reader {
			if e.hist == nil {
				return nil
			}
			return &history.Reader{Store: e.hist, Clock: e.clock.Now}
		}(),
		Log:   zaptest.NewLogger(t),
		Clock: e.clock.Now,
	}
	for _, o := range opts {
		o(&cfg)
	}
	e.h = portal.New(cfg)
	srv.Config.Handler = apitest.Handler(t, e.h)
	srv.Start()
	t.Cleanup(srv.Close)
	return e
}

func (e *env) set(f func(*portal.Settings)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f(&e.settings)
}

// browser is a client with its own cookies that follows no redirects.
type browser struct {
	t *testing.T
	c *http.Client
	// base is where it sends requests.
	base string
}

func (e *env) browser() *browser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return &browser{t: e.t, base: e.url, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}}
}

type answer struct {
	status int
	body   string
	header http.Header
}

func (b *browser) do(method, path string, form url.Values, header map[string]string) answer {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.base+path, body)
	if err != nil {
		b.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, string(data), resp.Header}
}

func (b *browser) get(path string) answer { return b.do("GET", path, nil, nil) }

func (b *browser) post(path string, form url.Values) answer {
	if form == nil {
		form = url.Values{}
	}
	return b.do("POST", path, form, nil)
}

// mint makes a link for consumer and returns its path.
func (e *env) mint(consumer string, ttl time.Duration, scopes ...string) string {
	e.t.Helper()
	l, err := e.h.Mint(context.Background(), consumer, ttl, scopes)
	if err != nil {
		e.t.Fatal(err)
	}
	return l.URL[strings.Index(l.URL, "/portal/"):]
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// signIn follows a fresh link for consumer and returns its CSRF token.
func (e *env) signIn(b *browser, consumer string, scopes ...string) string {
	e.t.Helper()
	path := e.mint(consumer, 0, scopes...)
	if a := b.get(path); a.status != 200 {
		e.t.Fatalf("GET link: %d %s", a.status, a.body)
	}
	if a := b.post(path, nil); a.status != 303 || a.header.Get("Location") != "/portal/" {
		e.t.Fatalf("POST link: %d %v %s", a.status, a.header, a.body)
	}
	a := b.get("/portal/")
	if a.status != 200 {
		e.t.Fatalf("overview: %d %s", a.status, a.body)
	}
	m := csrfRE.FindStringSubmatch(a.body)
	if m == nil {
		e.t.Fatalf("no CSRF token on the overview:\n%s", a.body)
	}
	return m[1]
}

func TestLinkSignsInAndPagesCarryStrictHeaders(t *testing.T) {
	e := newEnv(t, nil, nil)
	b := e.browser()
	e.signIn(b, "a")
	a := b.get("/portal/")
	for _, want := range []string{"100 requests per second, bursts of 200", "25,000", "Quota: 25,000 of 100,000 (25%)", `<progress id="meter-0" max="100000" value="25000">`, "pro"} {
		if !strings.Contains(a.body, want) {
			t.Errorf("overview lacks %q", want)
		}
	}
	for k, want := range map[string]string{"Content-Security-Policy": portal.CSP, "X-Content-Type-Options": "nosniff",
		"Referrer-Policy": "no-referrer", "Cache-Control": "no-store", "X-Frame-Options": "DENY"} {
		if got := a.header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if strings.Contains(a.body, "<script>") || strings.Contains(a.body, "style=") || strings.Contains(a.body, "<style") {
		t.Error("the page has inline script or style, which the CSP refuses")
	}
	for _, asset := range []string{"/portal/assets/portal.css", "/portal/assets/portal.js"} {
		if a := b.get(asset); a.status != 200 || len(a.body) < 100 {
			t.Errorf("%s: %d", asset, a.status)
		}
	}
	if a := b.get("/portal/assets/..%2fportal.go"); a.status != 404 {
		t.Errorf("asset outside assets: %d", a.status)
	}
}

func TestSessionCookieIsHostOnlyHTTPOnlyAndSecureOverHTTPS(t *testing.T) {
	e := newEnv(t, nil, nil)
	for _, tt := range []struct {
		give, want string
	}{
		{"http", "levy_portal="},
		{"https", "__Host-levy_portal="},
	} {
		t.Run(tt.give, func(t *testing.T) {
			e.set(func(s *portal.Settings) { s.PublicURL = tt.give + strings.TrimPrefix(e.url, "http") })
			b := e.browser()
			path := e.mint("a", 0)
			a := b.post(path, nil)
			c := a.header.Get("Set-Cookie")
			for _, want := range []string{tt.want, "Path=/", "HttpOnly", "SameSite=Lax"} {
				if !strings.Contains(c, want) {
					t.Errorf("Set-Cookie %q lacks %q", c, want)
				}
			}
			if strings.Contains(c, "Secure") != (tt.give == "https") {
				t.Errorf("Set-Cookie %q: Secure only over https", c)
			}
		})
	}
}

func TestLinkGetDoesNotUseItUpAndASecondUseIsRefused(t *testing.T) {
	e := newEnv(t, nil, nil)
	path := e.mint("a", 0)
	scanner := e.browser()
	for range 3 {
		if a := scanner.get(path); a.status != 200 || a.header.Get("Set-Cookie") != "" {
			t.Fatalf("GET: %d, cookie %q", a.status, a.header.Get("Set-Cookie"))
		}
	}
	user := e.browser()
	if a := user.post(path, nil); a.status != 303 {
		t.Fatalf("first use: %d %s", a.status, a.body)
	}
	other := e.browser()
	for _, a := range []answer{other.post(path, nil), other.get(path)} {
		if a.status != 410 || a.header.Get("Set-Cookie") != "" || !strings.Contains(a.body, "already used") {
			t.Fatalf("reuse: %d cookie %q\n%s", a.status, a.header.Get("Set-Cookie"), a.body)
		}
	}
	if a := other.get("/portal/"); a.status != 303 {
		t.Fatalf("the refused browser has a session: %d", a.status)
	}
}

func TestExpiredUnknownAndMalformedLinksAreRefusedWithoutSession(t *testing.T) {
	e := newEnv(t, nil, nil)
	expired := e.mint("a", time.Minute)
	e.clock.Add(time.Minute)
	forged := "/portal/link/" + strings.Repeat("A", 43)
	tests := []struct {
		name, path string
		want       int
		text       string
	}{
		{"expired", expired, 410, "expired"},
		{"unknown", forged, 404, "not one we know"},
		{"malformed", "/portal/link/short", 404, "not one we issued"},
		{"bad last character", "/portal/link/" + strings.Repeat("A", 42) + "B", 404, "not one we issued"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := e.browser()
			for _, a := range []answer{b.get(tt.path), b.post(tt.path, nil)} {
				if a.status != tt.want || a.header.Get("Set-Cookie") != "" || !strings.Contains(a.body, tt.text) {
					t.Fatalf("%d cookie %q, want %d %q:\n%s", a.status, a.header.Get("Set-Cookie"), tt.want, tt.text, a.body)
				}
			}
		})
	}
}

func TestMintRefusesBadRequests(t *testing.T) {
	e := newEnv(t, nil, nil)
	ctx := context.Background()
	tests := []struct {
		name     string
		consumer string
		ttl      time.Duration
		scopes   []string
		want     error
	}{
		{"ttl over a day", "a", 25 * time.Hour, nil, portal.ErrInvalid},
		{"negative ttl", "a", -time.Minute, nil, portal.ErrInvalid},
		{"unknown scope", "a", 0, []string{"admin"}, portal.ErrInvalid},
		{"scope twice", "a", 0, []string{"keys", "keys"}, portal.ErrInvalid},
		{"unknown consumer", "nobody", 0, nil, apikey.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := e.h.Mint(ctx, tt.consumer, tt.ttl, tt.scopes); !errors.Is(err, tt.want) {
				t.Fatalf("Mint = %v, want %v", err, tt.want)
			}
		})
	}
	e.set(func(s *portal.Settings) { s.Enabled = false })
	if _, err := e.h.Mint(ctx, "a", 0, nil); !errors.Is(err, portal.ErrDisabled) {
		t.Fatalf("Mint on a disabled portal = %v", err)
	}
	if a := e.browser().get("/portal/sign-in"); a.status != 404 {
		t.Fatalf("a disabled portal answers %d", a.status)
	}
}

func TestSignOutAndExpiryEndTheSession(t *testing.T) {
	e := newEnv(t, nil, nil)
	b := e.browser()
	csrf := e.signIn(b, "a")
	// The same cookie, replayed after sign-out, is worth nothing.
	u, _ := url.Parse(e.url)
	cookies := b.c.Jar.Cookies(u)
	if a := b.post("/portal/sign-out", url.Values{"csrf": {csrf}}); a.status != 303 {
		t.Fatalf("sign-out: %d %s", a.status, a.body)
	}
	replay := e.browser()
	replay.c.Jar.SetCookies(u, cookies)
	if a := replay.get("/portal/"); a.status != 303 {
		t.Fatalf("replayed cookie after sign-out: %d", a.status)
	}
	e.signIn(b, "a")
	e.clock.Add(time.Hour)
	if a := b.get("/portal/"); a.status != 303 || a.header.Get("Location") != "/portal/sign-in" {
		t.Fatalf("after the session's ttl: %d %v", a.status, a.header)
	}
}

func keyState(t *testing.T, keys apikey.Store, id string) apikey.Key {
	t.Helper()
	k, err := keys.GetKey(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return *k
}

func countKeys(t *testing.T, keys apikey.Store, consumer string) int {
	t.Helper()
	ks, err := keys.ListKeys(context.Background(), consumer)
	if err != nil {
		t.Fatal(err)
	}
	return len(ks)
}

func TestChangesWithoutTheCSRFTokenOrFromAnotherSiteAreRefusedAndChangeNothing(t *testing.T) {
	e := newEnv(t, nil, nil)
	b := e.browser()
	csrf := e.signIn(b, "a")
	wrong := strings.Repeat("x", 43)
	type try struct {
		name   string
		form   url.Values
		header map[string]string
	}
	tries := []try{
		{"no token", url.Values{}, nil},
		{"wrong token", url.Values{"csrf": {wrong}}, nil},
		{"wrong header", url.Values{}, map[string]string{"X-CSRF-Token": wrong}},
		{"other origin", url.Values{"csrf": {csrf}}, map[string]string{"Origin": "https://evil.example"}},
		{"cross-site fetch", url.Values{"csrf": {csrf}}, map[string]string{"Sec-Fetch-Site": "cross-site"}},
	}
	routes := []struct {
		path  string
		extra url.Values
	}{
		{"/portal/keys", nil},
		{"/portal/keys/" + e.keyA + "/revoke", nil},
		{"/portal/keys/" + e.keyA + "/roll", url.Values{"grace": {"1h"}}},
		{"/portal/plan", url.Values{"plan": {"free"}}},
		{"/portal/sign-out", nil},
	}
	for _, r := range routes {
		for _, tt := range tries {
			t.Run(r.path+"/"+tt.name, func(t *testing.T) {
				form := url.Values{}
				for k, v := range tt.form {
					form[k] = v
				}
				for k, v := range r.extra {
					form[k] = v
				}
				if a := b.do("POST", r.path, form, tt.header); a.status != 403 {
					t.Fatalf("%d, want 403:\n%s", a.status, a.body)
				}
			})
		}
	}
	if n := countKeys(t, e.keys, "a"); n != 1 {
		t.Fatalf("a has %d keys, want its 1", n)
	}
	if k := keyState(t, e.keys, e.keyA); k.Revoked || k.ReplacedBy != "" || !k.ExpiresAt.IsZero() {
		t.Fatalf("key changed: %+v", k)
	}
	if c, _ := e.keys.GetConsumer(context.Background(), "a"); c.Plan != "pro" {
		t.Fatalf("plan changed to %s", c.Plan)
	}
	if a := b.get("/portal/"); a.status != 200 {
		t.Fatalf("the session ended: %d", a.status)
	}
	// The token in the header works as well as the field.
	if a := b.do("POST", "/portal/keys", url.Values{}, map[string]string{"X-CSRF-Token": csrf}); a.status != 201 {
		t.Fatalf("create with the header token: %d", a.status)
	}
}

func TestScopesLimitPagesAndChanges(t *testing.T) {
	e := newEnv(t, nil, nil)
	b := e.browser()
	csrf := e.signIn(b, "a", portal.ScopeUsage)
	for _, tt := range []struct {
		method, path string
		form         url.Values
	}{
		{"GET", "/portal/keys", nil},
		{"POST", "/portal/keys", url.Values{"csrf": {csrf}}},
		{"POST", "/portal/keys/" + e.keyA + "/revoke", url.Values{"csrf": {csrf}}},
		{"POST", "/portal/keys/" + e.keyA + "/roll", url.Values{"csrf": {csrf}, "grace": {"1h"}}},
		{"GET", "/portal/plan", nil},
		{"POST", "/portal/plan", url.Values{"csrf": {csrf}, "plan": {"free"}}},
		{"POST", "/portal/billing", url.Values{"csrf": {csrf}}},
	} {
		if a := b.do(tt.method, tt.path, tt.form, nil); a.status != 403 {
			t.Errorf("%s %s: %d, want 403", tt.method, tt.path, a.status)
		}
	}
	if k := keyState(t, e.keys, e.keyA); k.Revoked || k.ReplacedBy != "" {
		t.Fatalf("key changed: %+v", k)
	}
	a := b.get("/portal/")
	if a.status != 200 || strings.Contains(a.body, `href="/portal/keys"`) || !strings.Contains(a.body, "25,000") {
		t.Fatalf("usage-only overview: %d\n%s", a.status, a.body)
	}
	keysOnly := e.browser()
	e.signIn(keysOnly, "a", portal.ScopeKeys)
	if a := keysOnly.get("/portal/"); strings.Contains(a.body, "units used") {
		t.Fatal("a session without scope usage sees usage")
	}
}

// Consumer a's session reaches none of b's keys or data on any route.
func TestASessionCannotReadOrActOnAnotherConsumersKeys(t *testing.T) {
	e := newEnv(t, nil, nil)
	b := e.browser()
	csrf := e.signIn(b, "a")
	before := keyState(t, e.keys, e.keyB)
	for _, tt := range []struct {
		method, path string
		form         url.Values
		want         int
	}{
		{"POST", "/portal/keys/" + e.keyB + "/revoke", url.Values{"csrf": {csrf}}, 404},
		{"POST", "/portal/keys/" + e.keyB + "/roll", url.Values{"csrf": {csrf}, "grace": {"0s"}}, 404},
		{"POST", "/portal/keys/no-such-key/revoke", url.Values{"csrf": {csrf}}, 404},
		{"GET", "/portal/keys/" + e.keyB, nil, 404},
		{"GET", "/portal/keys?consumer=b", nil, 200},
		{"GET", "/portal/?consumer=b", nil, 200},
		{"GET", "/portal/plan?consumer=b", nil, 200},
	} {
		a := b.do(tt.method, tt.path, tt.form, nil)
		if a.status != tt.want {
			t.Errorf("%s %s: %d, want %d", tt.method, tt.path, a.status, tt.want)
		}
		if strings.Contains(a.body, e.keyB) || strings.Contains(a.body, ">b<") {
			t.Errorf("%s %s shows b's data:\n%s", tt.method, tt.path, a.body)
		}
	}
	if after := keyState(t, e.keys, e.keyB); after != before {
		t.Fatalf("b's key changed: %+v -> %+v", before, after)
	}
	if n := countKeys(t, e.keys, "b"); n != 1 {
		t.Fatalf("b has %d keys", n)
	}
	// A plan change applies to a alone.
	if a := b.post("/portal/plan", url.Values{"csrf": {csrf}, "plan": {"free"}}); a.status != 303 {
		t.Fatalf("switch: %d %s", a.status, a.body)
	}
	ca, _ := e.keys.GetConsumer(context.Background(), "a")
	cb, _ := e.keys.GetConsumer(context.Background(), "b")
	if ca.Plan != "free" || cb.Plan != "free" {
		t.Fatalf("plans a=%s b=%s", ca.Plan, cb.Plan)
	}
}

func TestKeysAreCreatedRevokedAndRolledLikeTheAdminAPIDoes(t *testing.T) {
	e := newEnv(t, nil, nil)
	b := e.browser()
	csrf := e.signIn(b, "a")
	a := b.post("/portal/keys", url.Values{"csrf": {csrf}})
	secret := regexp.MustCompile(`id="secret"[^>]*value="([^"]+)"`).FindStringSubmatch(a.body)
	if a.status != 201 || secret == nil {
		t.Fatalf("create: %d\n%s", a.status, a.body)
	}
	if err := apikey.Check(secret[1]); err != nil {
		t.Fatalf("the secret shown is no key: %v", err)
	}
	k, c, err := e.keys.Lookup(context.Background(), hasher.Hash(secret[1]))
	if err != nil || c.ID != "a" || k.CreatedAt.IsZero() {
		t.Fatalf("the new key: %+v %+v %v", k, c, err)
	}
	if b.get("/portal/keys").body == "" || strings.Contains(b.get("/portal/keys").body, secret[1]) {
		t.Fatal("the secret shows again")
	}
	// The list shows each key's hint, and a dash for a key stored before
	// levy recorded them.
	if err := e.keys.PutKey(context.Background(), &apikey.Key{ID: "old-key", Hash: strings.Repeat("e", 64), ConsumerID: "a"}); err != nil {
		t.Fatal(err)
	}
	list := b.get("/portal/keys").body
	for _, want := range []string{"<code>" + secret[1][:len("levy_")+4] + "…</code>", "<code>" + e.secretA[:len("levy_")+4] + "…</code>"} {
		if !strings.Contains(list, want) {
			t.Errorf("the keys page lacks %s", want)
		}
	}
	if !regexp.MustCompile(`(?s)id="key-old-key">.*?class="hint"><span aria-hidden="true">—</span><span class="visually-hidden">start not recorded</span>`).MatchString(list) ||
		strings.Contains(list, secret[1][:len("levy_")+5]) {
		t.Errorf("keys page:\n%s", list)
	}
	if a := b.post("/portal/keys/"+k.ID+"/revoke", url.Values{"csrf": {csrf}}); a.status != 303 {
		t.Fatalf("revoke: %d", a.status)
	}
	if !keyState(t, e.keys, k.ID).Revoked {
		t.Fatal("not revoked")
	}
	if a := b.post("/portal/keys/"+e.keyA+"/roll", url.Values{"csrf": {csrf}, "grace": {"forever"}}); a.status != 400 {
		t.Fatalf("roll with a made-up deadline: %d", a.status)
	}
	a = b.post("/portal/keys/"+e.keyA+"/roll", url.Values{"csrf": {csrf}, "grace": {"1h"}})
	if a.status != 201 {
		t.Fatalf("roll: %d\n%s", a.status, a.body)
	}
	old := keyState(t, e.keys, e.keyA)
	if old.ReplacedBy == "" || !old.ExpiresAt.Equal(e.clock.Now().Add(time.Hour)) {
		t.Fatalf("rolled key: %+v", old)
	}
	if a := b.post("/portal/keys/"+e.keyA+"/roll", url.Values{"csrf": {csrf}, "grace": {"1h"}}); a.status != 409 {
		t.Fatalf("second roll: %d", a.status)
	}
}

func TestKeySignInLimitsFailuresAndGrantsUsageAndKeys(t *testing.T) {
	e := newEnv(t, nil, nil)
	b := e.browser()
	if a := b.post("/portal/sign-in", url.Values{"key": {e.secretA}}); a.status != 404 {
		t.Fatalf("key sign-in while off: %d", a.status)
	}
	e.set(func(s *portal.Settings) { s.KeySignIn = true })
	for range 10 {
		if a := b.post("/portal/sign-in", url.Values{"key": {"levy_nonsense"}}); a.status != 401 || a.header.Get("Set-Cookie") != "" {
			t.Fatalf("bad key: %d", a.status)
		}
	}
	if a := b.post("/portal/sign-in", url.Values{"key": {e.secretA}}); a.status != 429 {
		t.Fatalf("after 10 failures: %d", a.status)
	}
	e.clock.Add(11 * time.Minute)
	if a := b.post("/portal/sign-in", url.Values{"key": {e.secretA}}); a.status != 303 {
		t.Fatalf("good key: %d %s", a.status, a.body)
	}
	if a := b.get("/portal/keys"); a.status != 200 {
		t.Fatalf("keys: %d", a.status)
	}
	if a := b.get("/portal/plan"); a.status != 403 {
		t.Fatalf("plan with a key session: %d", a.status)
	}
	if err := e.keys.RevokeKey(context.Background(), e.keyA); err != nil {
		t.Fatal(err)
	}
	if a := e.browser().post("/portal/sign-in", url.Values{"key": {e.secretA}}); a.status != 401 {
		t.Fatalf("revoked key signs in: %d", a.status)
	}
}

// Two portals on one Redis, as two replicas: a link minted on one works
// once, on either.
func TestLinkIsSingleUseAcrossReplicasSharingRedis(t *testing.T) {
	srv := redistest.Start(t)
	clients := make([]portal.Store, 2)
	for i := range clients {
		c, _ := redisstore.NewClient(redisstore.Options{Addr: srv.Addr, Timeout: time.Second})
		t.Cleanup(func() { c.Close() })
		clients[i] = redisstore.Portal{Client: c}
	}
	keys := newEnv(t, nil, nil).keys // one store of consumers and keys
	one, two := newEnv(t, clients[0], keys), newEnv(t, clients[1], keys)
	path := one.mint("a", 0)
	if a := two.browser().get(path); a.status != 200 {
		t.Fatalf("GET on the other replica: %d", a.status)
	}
	if a := two.browser().post(path, nil); a.status != 303 {
		t.Fatalf("use on the other replica: %d", a.status)
	}
	if a := one.browser().post(path, nil); a.status != 410 {
		t.Fatalf("reuse on the minting replica: %d", a.status)
	}
	// Many replicas taking one link at once: exactly one gets it.
	path = one.mint("a", 0)
	const n = 16
	results := make(chan int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results <- []*env{one, two}[i%2].browser().post(path, nil).status
		}()
	}
	wg.Wait()
	close(results)
	got := map[int]int{}
	for s := range results {
		got[s]++
	}
	if got[303] != 1 || got[410] != n-1 {
		t.Fatalf("concurrent uses: %v, want one 303 and %d 410", got, n-1)
	}
}
