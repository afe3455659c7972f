package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/levyhq/levy/pkg/billing"
	"github.com/levyhq/levy/pkg/server/servertest"
)

// exportLevy is a whole levy with three labelled consumers (two teams,
// one without a team) that have used the API, and its admin token.
func exportLevy(t *testing.T) (*servertest.Levy, map[string]int) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "levy.yaml")
	text := `plans:
  payg: {model: payg, rate: {requests: 1000, per: 1s}, billing: {meter: api_calls}}
  pro: {model: tiered, rate: {requests: 1000, per: 1s}, quota: {requests: 3, period: month, enforcement: soft}, billing: {meter: pro_calls}}
`
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LEVY_ADMIN_TOKEN", "t")
	l := servertest.Start(t, path, servertest.Options{})
	conn, err := grpc.NewClient(l.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	authz := authv3.NewAuthorizationClient(conn)
	levy := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		args = append(args, "--admin-url", "http://"+l.HTTPAddr, "--token", "t")
		if err := run(context.Background(), args, &out, &out); err != nil {
			t.Fatalf("levy %s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
		return out.String()
	}
	calls := map[string]int{"search-a": 4, "search-b": 2, "ops-a": 5, "loner": 1}
	for id, n := range calls {
		p, team := "payg", ""
		switch id {
		case "search-a", "search-b":
			team = "search"
		case "ops-a":
			team, p = "ops", "pro"
		}
		args := []string{"consumers", "put", id, "--plan", p}
		if team != "" {
			args = append(args, "--label", "team="+team)
		}
		levy(args...)
		out := levy("keys", "create", "--consumer", id)
		key := ""
		for _, f := range strings.Fields(out) {
			if strings.HasPrefix(f, "lvy_") || strings.Count(f, "_") >= 1 && len(f) > 30 {
				key = f
			}
		}
		if key == "" {
			t.Fatalf("no key in %q", out)
		}
		for range n {
			h := map[string]string{":method": "GET", ":path": "/v1/items", ":authority": "api.example.com", "x-api-key": key}
			resp, err := authz.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
				Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/v1/items", Host: "api.example.com", Headers: h}}}})
			if err != nil || resp.GetStatus().GetCode() != 0 {
				t.Fatalf("check of %s: %v %v", id, resp.GetStatus(), err)
			}
		}
	}
	return l, calls
}

// The chargeback export sums, per team and in total, the same settled,
// billable and exported units levy usage prints for each consumer, in
// JSON and in CSV.
func TestUsageExportSumsEqualLevyUsage(t *testing.T) {
	l, calls := exportLevy(t)
	levy := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		args = append(args, "--admin-url", "http://"+l.HTTPAddr, "--token", "t")
		if err := run(context.Background(), args, &out, &out); err != nil {
			t.Fatalf("levy %s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
		return out.String()
	}
	per := map[string]billing.UsageReport{}
	for id := range calls {
		var r billing.UsageReport
		c := &adminClient{url: "http://" + l.HTTPAddr, token: "t"}
		if err := c.call(context.Background(), "GET", consumerPath(id)+"/usage", nil, &r); err != nil {
			t.Fatal(err)
		}
		per[id] = r
		// levy usage prints the same report.
		text := levy("usage", id)
		if !strings.Contains(text, "billable: "+strconv.FormatInt(r.Billable, 10)) {
			t.Fatalf("levy usage %s:\n%s\nwant billable %d", id, text, r.Billable)
		}
	}
	if per["search-a"].Settled != 4 || per["ops-a"].Billable != 2 {
		t.Fatalf("usage: search-a settled %d (want 4), ops-a billable %d (want 5-3)", per["search-a"].Settled, per["ops-a"].Billable)
	}
	month := time.Now().UTC().Format("2006-01")
	var rep billing.ChargebackReport
	if err := json.Unmarshal([]byte(levy("usage", "export", "--period", month, "--by", "team", "--format", "json")), &rep); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"search": {"search-a", "search-b"}, "ops": {"ops-a"}, "": {"loner"}}
	var total billing.ChargebackFigures
	if len(rep.Groups) != len(want) {
		t.Fatalf("groups: %+v", rep.Groups)
	}
	for _, g := range rep.Groups {
		var sum billing.ChargebackFigures
		var ids []string
		for _, c := range g.Consumers {
			u := per[c.Consumer]
			if c.Settled != u.Settled || c.Billable != u.Billable || c.Exported != u.Exported {
				t.Errorf("%s: export %+v, levy usage settled %d billable %d exported %d", c.Consumer, c.ChargebackFigures, u.Settled, u.Billable, u.Exported)
			}
			sum.Settled += u.Settled
			sum.Billable += u.Billable
			sum.Exported += u.Exported
			ids = append(ids, c.Consumer)
		}
		if strings.Join(ids, ",") != strings.Join(want[g.Value], ",") {
			t.Errorf("group %q holds %v, want %v", g.Value, ids, want[g.Value])
		}
		if g.ChargebackFigures != sum {
			t.Errorf("group %q sums %+v, its consumers' levy usage %+v", g.Value, g.ChargebackFigures, sum)
		}
		total.Settled += sum.Settled
		total.Billable += sum.Billable
		total.Exported += sum.Exported
	}
	if rep.Totals != total || total.Settled != 12 {
		t.Errorf("totals %+v, want %+v (12 settled)", rep.Totals, total)
	}

	rows, err := csv.NewReader(strings.NewReader(levy("usage", "export", "--period", month, "--by", "label:team"))).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	last := rows[len(rows)-1]
	if rows[0][1] != "label:team" || last[1] != "*" || last[4] != strconv.FormatInt(total.Settled, 10) || last[5] != strconv.FormatInt(total.Billable, 10) {
		t.Fatalf("csv:\n%v", rows)
	}
}

// A bad period, format or grouping is a clear error and a non-zero exit,
// from the CLI and from the API alike.
func TestUsageExportRefusesBadInput(t *testing.T) {
	l, _ := exportLevy(t)
	tests := []struct {
		give []string
		want string
	}{
		{[]string{"--period", "2026-13", "--by", "team"}, `period "2026-13": want a month such as 2026-11`},
		{[]string{"--period", "November", "--by", "team"}, `period "November"`},
		{[]string{"--by", "team", "--format", "xml"}, `format "xml": want csv or json`},
		{[]string{"--by", "Team!"}, `by "Team!": want label:KEY`},
		{[]string{}, "by is required"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		args := append([]string{"usage", "export", "--admin-url", "http://" + l.HTTPAddr, "--token", "t"}, tt.give...)
		err := run(context.Background(), args, &out, &out)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("levy usage export %v: %v, want an error with %q", tt.give, err, tt.want)
		}
	}
	c := &adminClient{url: "http://" + l.HTTPAddr, token: "t"}
	for _, q := range []string{"period=2026-13&by=label:team", "by=label:team&format=xml", "by=", "by=team&what=1"} {
		err := c.call(context.Background(), "GET", "/v1/usage/export?"+q, nil, nil)
		if err == nil || !strings.Contains(err.Error(), "400") {
			t.Errorf("GET /v1/usage/export?%s: %v, want a 400", q, err)
		}
	}
}
