package admin_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/api/apitest"
	"github.com/levyhq/levy/pkg/admin"
	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/localstore"
	"github.com/levyhq/levy/pkg/plan"
)

// knownOnly is the usage history of the consumer acme alone.
type knownOnly struct{ *history.Reader }

func (k knownOnly) Series(ctx context.Context, consumer string, q history.Query) (*history.Series, error) {
	if consumer != "acme" {
		return nil, apikey.ErrNotFound
	}
	return k.Reader.Series(ctx, consumer, q)
}

// The series route answers JSON and CSV as api/openapi.yaml describes,
// and 400 problems for bad parameters.
func TestSeriesRouteAnswersJSONCSVAndProblems(t *testing.T) {
	db, err := localstore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st := db.History(history.DefaultRetention)
	h0 := time.Date(2026, 3, 14, 15, 0, 0, 0, time.UTC)
	ctx := context.Background()
	if err := st.SetUsage(ctx, []history.Usage{{Consumer: "acme", Step: history.Hour, Start: h0, Billed: 40, Refunded: 5}}); err != nil {
		t.Fatal(err)
	}
	if err := st.AddCounts(ctx, []history.Counts{{Consumer: "acme", Key: "k1", Hour: h0, Allowed: 9, Denied: history.Denied{Rate: 2, Cap: 1}}}); err != nil {
		t.Fatal(err)
	}
	reader := &history.Reader{Store: st, Clock: func() time.Time { return h0.Add(2 * time.Hour) }}
	h := admin.New(admin.Config{
		Store: newStore(t), Catalog: func() *plan.Catalog { return nil }, Hasher: func() apikey.Hasher { return hasher },
		Token: token, Log: zaptest.NewLogger(t), Series: knownOnly{reader},
	})
	srv := httptest.NewServer(apitest.Handler(t, h))
	defer srv.Close()
	get := func(path, accept string) (int, string, string) {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, res.Header.Get("Content-Type"), string(b)
	}

	code, _, body := get("/v1/consumers/acme/usage/series?from=2026-03-14T14:00:00Z&to=2026-03-14T17:00:00Z&key=all", "")
	var s history.Series
	if err := json.Unmarshal([]byte(body), &s); code != 200 || err != nil {
		t.Fatalf("%d %s %v", code, body, err)
	}
	if len(s.Points) != 3 || s.Points[1].Billed != 40 || s.Total.Denied != (history.Denied{Rate: 2, Cap: 1}) ||
		len(s.Keys) != 1 || s.Keys[0] != (history.KeyTotal{Key: "k1", KeyCounts: history.KeyCounts{Allowed: 9, Denied: 3}}) {
		t.Fatalf("series %+v", s)
	}

	wantCSV := "start,billed,refunded,denied_rate,denied_quota,denied_cap\n2026-03-14T14:00:00Z,0,0,0,0,0\n2026-03-14T15:00:00Z,40,5,2,0,1\n"
	for _, tt := range []struct{ path, accept string }{
		{"/v1/consumers/acme/usage/series?from=2026-03-14T14:00:00Z&to=2026-03-14T16:00:00Z&format=csv", ""},
		{"/v1/consumers/acme/usage/series?from=2026-03-14T14:00:00Z&to=2026-03-14T16:00:00Z", "text/csv"},
	} {
		code, ctype, body := get(tt.path, tt.accept)
		if code != 200 || !strings.HasPrefix(ctype, "text/csv") || body != wantCSV {
			t.Errorf("%s (Accept %q): %d %s\n%s", tt.path, tt.accept, code, ctype, body)
		}
	}

	for _, tt := range []struct {
		give       string
		wantStatus int
		wantReason string
	}{
		{"/v1/consumers/acme/usage/series?step=week", 400, "invalid_step"},
		{"/v1/consumers/acme/usage/series?from=2026-03-14T16:00:00Z&to=2026-03-14T14:00:00Z", 400, "invalid_range"},
		{"/v1/consumers/acme/usage/series?from=2025-01-01T00:00:00Z&to=2026-03-14T14:00:00Z", 400, "range_too_long"},
		{"/v1/consumers/ghost/usage/series", 404, "consumer_not_found"},
	} {
		code, ctype, body := get(tt.give, "")
		if code != tt.wantStatus || ctype != "application/problem+json" || !strings.Contains(body, tt.wantReason) {
			t.Errorf("%s: %d %s %s, want %d %s", tt.give, code, ctype, body, tt.wantStatus, tt.wantReason)
		}
	}
}
