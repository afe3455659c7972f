package console

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Wire shapes of the admin API's answers the console reads.
type (
	consumerJSON struct {
		ID               string            `json:"id"`
		Plan             string            `json:"plan"`
		Status           string            `json:"status"`
		StripeCustomerID string            `json:"stripe_customer_id"`
		PeriodAnchor     string            `json:"period_anchor"`
		Labels           map[string]string `json:"labels"`
	}
	keyJSON struct {
		ID         string `json:"id"`
		Status     string `json:"status"`
		CreatedAt  string `json:"created_at"`
		ExpiresAt  string `json:"expires_at"`
		ReplacedBy string `json:"replaced_by"`
		Hint       string `json:"hint"`
	}
	// usageJSON is billing.UsageReport: levy usage's figures.
	usageJSON struct {
		Model       string    `json:"model"`
		PeriodStart time.Time `json:"period_start"`
		PeriodEnd   time.Time `json:"period_end"`
		Used        int64     `json:"used"`
		Included    int64     `json:"included"`
		Overage     int64     `json:"overage"`
		Settled     int64     `json:"settled"`
		Billable    int64     `json:"billable"`
		Exported    int64     `json:"exported"`
		Pending     int64     `json:"pending"`
	}
	figures struct {
		Settled  int64 `json:"settled"`
		Billable int64 `json:"billable"`
		Exported int64 `json:"exported"`
	}
	// chargebackJSON is billing.ChargebackReport.
	chargebackJSON struct {
		Period string  `json:"period"`
		By     string  `json:"by"`
		Totals figures `json:"totals"`
		Groups []struct {
			Value string `json:"value"`
			figures
			Consumers []struct {
				Consumer string `json:"consumer"`
				Plan     string `json:"plan"`
				figures
			} `json:"consumers"`
		} `json:"groups"`
	}
)

type overviewData struct {
	Plans []PlanTotal
	Top   []Row
	At    time.Time
	Took  time.Duration
	Count int
}

func (h *Handler) overview(w http.ResponseWriter, r *http.Request, s *session) {
	plans, top := h.cfg.Index.Totals(10)
	d := overviewData{Plans: plans, Top: top, At: h.cfg.Index.At()}
	res := h.cfg.Index.Query(Query{Size: 1})
	d.Count, d.Took = res.Matched, res.Took
	h.render(w, r, http.StatusOK, "overview.html", page{Title: "Overview", Active: "overview", Session: s, Data: d})
}

type listData struct {
	Query   Query
	Result  Result
	Plans   []string
	Sorts   []sortOption
	Prev    string
	Next    string
	First   int
	Last    int
	Invalid string
}

type sortOption struct{ Value, Label string }

// list answers the consumers page: ?q= (id or name), ?plan=, ?status=,
// ?sort=id|usage|percent|denied|seen, ?page=.
func (h *Handler) list(w http.ResponseWriter, r *http.Request, s *session) {
	v := r.URL.Query()
	q := Query{Search: v.Get("q"), Plan: v.Get("plan"), Status: v.Get("status"), Sort: v.Get("sort"), Size: PageSize, Page: 1}
	d := listData{Plans: h.planNames(), Sorts: []sortOption{{SortUsage, "Usage (most first)"}, {SortPercent, "Percent of quota"},
		{SortDenied, "Denials this period"}, {SortSeen, "Last seen (latest first)"}, {SortID, "Id (A to Z)"}}}
	var bad []string
	if q.Sort == "" {
		q.Sort = SortUsage
	} else if !contains(sorts, q.Sort) {
		bad = append(bad, "sort "+strconv.Quote(q.Sort)+" is not one of "+strings.Join(sorts, ", "))
		q.Sort = SortUsage
	}
	if q.Status != "" && q.Status != "active" && q.Status != "suspended" {
		bad = append(bad, "status "+strconv.Quote(q.Status)+" is not active or suspended")
		q.Status = ""
	}
	if p := v.Get("page"); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 1e6 {
			bad = append(bad, "page "+strconv.Quote(p)+" is not a page number")
		} else {
			q.Page = n
		}
	}
	if len(q.Search) > 200 {
		q.Search = q.Search[:200]
	}
	d.Invalid = strings.Join(bad, "; ")
	d.Query, d.Result = q, h.cfg.Index.Query(q)
	link := func(n int) string {
		u := url.Values{}
		for k, val := range map[string]string{"q": q.Search, "plan": q.Plan, "status": q.Status, "sort": q.Sort} {
			if val != "" {
				u.Set(k, val)
			}
		}
		u.Set("page", strconv.Itoa(n))
		return "/console/consumers?" + u.Encode()
	}
	if q.Page > 1 {
		d.Prev = link(q.Page - 1)
	}
	if q.Page < d.Result.Pages {
		d.Next = link(q.Page + 1)
	}
	if len(d.Result.Rows) > 0 {
		d.First = (q.Page-1)*q.Size + 1
		d.Last = d.First + len(d.Result.Rows) - 1
	}
	status := http.StatusOK
	if d.Invalid != "" {
		status = http.StatusBadRequest
	}
	h.render(w, r, status, "consumers.html", page{Title: "Consumers", Active: "consumers", Session: s, Data: d})
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func (h *Handler) planNames() []string {
	if h.cfg.Catalog == nil {
		return nil
	}
	if c := h.cfg.Catalog(); c != nil {
		return c.Names()
	}
	return nil
}

type consumerData struct {
	Consumer consumerJSON
	Usage    *usageJSON
	UsageErr string
	Percent  int64
	Keys     []keyJSON
	Plans    []string
	// Created is a key issued now (its secret shown once); Link a portal
	// link minted now.
	Created *createdKey
	Link    *mintedLink
}

type createdKey struct{ ID, Key string }
type mintedLink struct {
	URL       string
	ExpiresAt string
}

// consumerPage shows a consumer; notice and the one-time secrets of an
// action come with it.
func (h *Handler) consumerPage(w http.ResponseWriter, r *http.Request, s *session) {
	h.showConsumer(w, r, s, http.StatusOK, "", "", nil)
}

func (h *Handler) showConsumer(w http.ResponseWriter, r *http.Request, s *session, status int, notice, failure string, fill func(*consumerData)) {
	id := r.PathValue("id")
	var d consumerData
	if code, detail := h.call(r.Context(), r, "GET", consumerPath(id), nil, &d.Consumer); detail != "" {
		h.render(w, r, code, "message.html", page{Title: "Consumer " + id, Session: s, Data: msg{Text: detail}})
		return
	}
	var u usageJSON
	if _, detail := h.call(r.Context(), r, "GET", consumerPath(id)+"/usage", nil, &u); detail != "" {
		d.UsageErr = detail
	} else {
		d.Usage = &u
		if u.Included > 0 {
			d.Percent = u.Used * 100 / u.Included
		}
	}
	var keys struct {
		Keys []keyJSON `json:"keys"`
	}
	if code, detail := h.call(r.Context(), r, "GET", consumerPath(id)+"/keys", nil, &keys); detail != "" {
		h.render(w, r, code, "message.html", page{Title: "Consumer " + id, Session: s, Data: msg{Text: detail}})
		return
	}
	d.Keys, d.Plans = keys.Keys, h.planNames()
	if fill != nil {
		fill(&d)
	}
	h.render(w, r, status, "consumer.html", page{Title: "Consumer " + id, Active: "consumers", Session: s, Notice: notice, Error: failure, Data: d})
}

// act makes an admin call for a form and shows the consumer with what
// came of it.
func (h *Handler) act(w http.ResponseWriter, r *http.Request, s *session, method, path string, body, out any, done string, fill func(*consumerData)) {
	code, detail := h.call(r.Context(), r, method, path, body, out)
	if detail != "" {
		h.showConsumer(w, r, s, code, "", detail, nil)
		return
	}
	h.cfg.Index.Kick()
	h.showConsumer(w, r, s, http.StatusOK, done, "", fill)
}

func (h *Handler) changePlan(w http.ResponseWriter, r *http.Request, s *session) {
	p := r.PostForm.Get("plan")
	h.act(w, r, s, "PATCH", consumerPath(r.PathValue("id")), map[string]any{"plan": p}, nil, "Plan changed to "+p+".", nil)
}

func (h *Handler) changeStatus(w http.ResponseWriter, r *http.Request, s *session) {
	st := r.PostForm.Get("status")
	done := "Consumer suspended: its keys are refused."
	if st == "active" {
		done = "Consumer resumed: its keys work again."
	}
	h.act(w, r, s, "PATCH", consumerPath(r.PathValue("id")), map[string]any{"status": st}, nil, done, nil)
}

func (h *Handler) issueKey(w http.ResponseWriter, r *http.Request, s *session) {
	body := map[string]any{}
	if id := strings.TrimSpace(r.PostForm.Get("key_id")); id != "" {
		body["id"] = id
	}
	var out struct {
		ID  string `json:"id"`
		Key string `json:"key"`
	}
	h.act(w, r, s, "POST", consumerPath(r.PathValue("id"))+"/keys", body, &out, "Key issued: copy it now, it is shown only this once.",
		func(d *consumerData) { d.Created = &createdKey{ID: out.ID, Key: out.Key} })
}

func (h *Handler) revokeKey(w http.ResponseWriter, r *http.Request, s *session) {
	key := r.PathValue("key")
	h.act(w, r, s, "POST", "/v1/keys/"+url.PathEscape(key)+"/revoke", nil, nil, "Key "+key+" revoked: it is refused from now on.", nil)
}

func (h *Handler) portalLink(w http.ResponseWriter, r *http.Request, s *session) {
	body := map[string]any{}
	if ttl := r.PostForm.Get("ttl"); ttl != "" {
		body["ttl"] = ttl
	}
	var out struct {
		URL       string `json:"url"`
		ExpiresAt string `json:"expires_at"`
	}
	h.act(w, r, s, "POST", consumerPath(r.PathValue("id"))+"/portal-links", body, &out, "Portal sign-in link minted: send it to the customer; it works once.",
		func(d *consumerData) { d.Link = &mintedLink{URL: out.URL, ExpiresAt: out.ExpiresAt} })
}

type chargebackData struct {
	Period, By string
	Report     *chargebackJSON
	CSV        string
}

// chargeback shows the usage export (?period=2026-11&by=team); with
// format=csv it answers the CSV file.
func (h *Handler) chargeback(w http.ResponseWriter, r *http.Request, s *session) {
	v := r.URL.Query()
	d := chargebackData{Period: v.Get("period"), By: strings.TrimPrefix(v.Get("by"), "label:")}
	p := page{Title: "Chargeback", Active: "chargeback", Session: s, Data: &d}
	if d.By == "" {
		h.render(w, r, http.StatusOK, "chargeback.html", p)
		return
	}
	q := url.Values{"by": {"label:" + d.By}}
	if d.Period != "" {
		q.Set("period", d.Period)
	}
	if v.Get("format") == "csv" {
		q.Set("format", "csv")
		req, _ := http.NewRequestWithContext(r.Context(), "GET", "/v1/usage/export?"+q.Encode(), http.NoBody)
		req.RemoteAddr = r.RemoteAddr
		req.Header.Set("Authorization", "Bearer "+h.token())
		h.cfg.Admin.ServeHTTP(w, req)
		return
	}
	q.Set("by", d.By)
	q.Set("format", "csv")
	d.CSV = "/console/chargeback?" + q.Encode()
	q.Del("format")
	q.Set("by", "label:"+d.By)
	var rep chargebackJSON
	code, detail := h.call(r.Context(), r, "GET", "/v1/usage/export?"+q.Encode(), nil, &rep)
	if detail != "" {
		p.Error = detail
		h.render(w, r, code, "chargeback.html", p)
		return
	}
	d.Report = &rep
	h.render(w, r, http.StatusOK, "chargeback.html", p)
}
