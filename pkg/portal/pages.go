package portal

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/plan"
)

// notices are the lines a redirect after a change may ask to show
// (?done=...): fixed texts, so that a URL cannot put words on the page.
var notices = map[string]string{
	"revoked": "The key was revoked: it is refused from now on.",
	"plan":    "Your plan was changed. New limits apply to your next request.",
	// Stripe Checkout's success page: the webhook that applies the plan
	// may come a moment later.
	"checkout": "Thank you. Your new plan applies as soon as Stripe confirms your subscription, usually within a minute.",
}

func notice(r *http.Request) string { return notices[r.URL.Query().Get("done")] }

type overviewData struct {
	ConsumerID string
	Status     accountStatus
	Plan       string
	Model      string
	Start, End time.Time
	Rate       string
	Quota      string
	// Usage is shown with scope usage.
	ShowUsage    bool
	UsageError   string
	Used         int64
	Meters       []meter
	Overage      int64
	Billable     int64
	BilledPerUse bool
	// Alert is the banner of the highest usage alert threshold crossed
	// this period ("You have used 80% of your monthly quota").
	Alert string
	// AlertOver: the threshold is 100% or more.
	AlertOver bool
	// Cost is the period's cost so far and projected (plans with
	// pricing, and free ones).
	Cost *costView
}

func (h *Handler) overview(w http.ResponseWriter, r *http.Request, s *sess) {
	c := s.consumer
	now := h.clock()
	// Payment goes through the Stripe customer portal, which the plan
	// page's "Manage billing" opens (scope plan).
	canBill := h.cfg.Billing != nil && c.StripeCustomerID != "" && s.has(ScopePlan)
	d := overviewData{ConsumerID: c.ID, Status: statusOf(c, now, canBill, h.settings().Contact), Plan: c.Plan}
	p, ok := h.plan(c.Plan)
	if ok {
		d.Model = modelWords(p.Model)
		d.Rate = rateWords(p.Rate)
		d.Quota = quotaWords(p)
		period := plan.PeriodAt(now, p.UsagePeriod(), c.PeriodAnchor)
		d.Start, d.End = period.Start, period.End
	}
	if s.has(ScopeUsage) {
		d.ShowUsage = true
		switch {
		case h.cfg.Usage == nil:
			d.UsageError = "Usage figures are not available."
		case !ok:
			d.UsageError = "Your plan is not known to this service; ask your provider."
		default:
			u, err := h.cfg.Usage.Period(r.Context(), c)
			if err != nil {
				h.log.Error("portal usage", zap.String("consumer", c.ID), zap.Error(err))
				d.UsageError = "Usage figures cannot be read right now. Try again in a minute."
				break
			}
			d.Start, d.End, d.Used, d.Overage, d.Billable = u.Start, u.End, u.Used, u.Overage, u.Billable
			d.BilledPerUse = p.Model == plan.PayG
			if q := p.Quota; q != nil && q.Requests > 0 {
				label := "Included units"
				if q.Enforcement == plan.Hard {
					label = "Quota"
				}
				d.Meters = append(d.Meters, newMeter(label, u.Used, q.Requests))
			}
			if q := p.Quota; q != nil && q.Cap > 0 {
				d.Meters = append(d.Meters, newMeter("Spend cap", u.Used, q.Cap))
			}
			d.Alert, d.AlertOver = alertBanner(p, u.Used)
			d.Cost = costOf(p, plan.Period{Start: u.Start, End: u.End}, now, u.Used)
		}
	}
	h.render(w, r, http.StatusOK, "overview.html", page{Title: "Overview", Active: "overview", Session: s, Notice: notice(r), Data: d})
}

// alertBanner is the overview's banner once used has crossed one of p's
// usage alert thresholds (those that send the operator's usage alerts).
func alertBanner(p *plan.Plan, used int64) (string, bool) {
	crossed := p.AlertsCrossed(used)
	if len(crossed) == 0 {
		return "", false
	}
	// The share used, not the threshold: past 80% at 90%, it says 90%.
	limit, name := p.AlertLimit()
	return fmt.Sprintf("You have used %d%% of your %s %s.", used*100/limit, plan.PeriodWord(p.UsagePeriod()), name), crossed[len(crossed)-1] >= 100
}

func modelWords(m plan.Model) string {
	switch m {
	case plan.Tiered:
		return "Fixed monthly plan"
	case plan.PayG:
		return "Pay as you go"
	case plan.Freemium:
		return "Free"
	}
	return string(m)
}

func (h *Handler) plan(name string) (*plan.Plan, bool) {
	if h.cfg.Catalog == nil {
		return nil, false
	}
	cat := h.cfg.Catalog()
	if cat == nil {
		return nil, false
	}
	return cat.Get(name)
}

// keyView is a key as the keys page shows it: never its secret or hash.
type keyView struct {
	ID string
	// Hint is the key's prefix and first random characters ("levy_Ab3d");
	// "" for a key stored before levy recorded it.
	Hint       string
	Status     string
	Active     bool
	CreatedAt  time.Time
	ExpiresAt  time.Time
	ReplacedBy string
	// Allowed and Denied are its requests over the page's range; LastUsed
	// the start of its latest hour with a request (zero: none kept).
	Allowed, Denied int64
	LastUsed        time.Time
}

func (h *Handler) keysPage(w http.ResponseWriter, r *http.Request, s *sess) {
	h.showKeys(w, r, s, http.StatusOK, nil)
}

// created is a key just made: its secret, shown once.
type created struct {
	ID, Secret string
	// Replaces is the rolled key and when it stops working.
	Replaces string
	Until    time.Time
}

func (h *Handler) showKeys(w http.ResponseWriter, r *http.Request, s *sess, status int, made *created) {
	q, bad := parseKeysQuery(r.URL.Query())
	if bad != "" {
		h.render(w, r, http.StatusBadRequest, "message.html", page{Title: "Not offered", Session: s, Data: message{Text: bad}})
		return
	}
	keys, err := h.cfg.Keys.ListKeys(r.Context(), s.Consumer)
	if err != nil {
		h.log.Error("portal list keys", zap.String("consumer", s.Consumer), zap.Error(err))
		h.message(w, r, http.StatusServiceUnavailable, "Try again", "Your keys cannot be read right now. Try again in a minute.")
		return
	}
	now := h.clock()
	views := make([]keyView, 0, len(keys))
	for _, k := range keys {
		v := keyView{ID: k.ID, Hint: k.Hint, Status: "Active", Active: true, CreatedAt: k.CreatedAt, ExpiresAt: k.ExpiresAt, ReplacedBy: k.ReplacedBy}
		switch {
		case k.Revoked:
			v.Status, v.Active = "Revoked", false
		case k.Expired(now):
			v.Status, v.Active = "Expired", false
		case k.ReplacedBy != "":
			v.Status = "Rolled: works until " + k.ExpiresAt.UTC().Format("2 Jan 2006 15:04 UTC")
		}
		views = append(views, v)
	}
	table := newKeysTable(q, len(views))
	table.HourlyKept = daysWords(h.retention().Hourly)
	if h.cfg.History != nil {
		counts, last, from, to, err := h.keyCounts(r.Context(), s, q.Range)
		if err != nil {
			h.log.Error("portal key counts", zap.String("consumer", s.Consumer), zap.Error(err))
			table.CountError = "Request counts cannot be read right now. Try again in a minute."
		} else {
			table.Counted, table.From, table.To = true, from, to.Add(-24*time.Hour)
			for i := range views {
				c := counts[views[i].ID]
				views[i].Allowed, views[i].Denied, views[i].LastUsed = c.Allowed, c.Denied, last[views[i].ID]
			}
		}
	}
	sortKeys(views, q)
	views = views[min(table.First-1, len(views)):table.LastShown]
	h.render(w, r, status, "keys.html", page{Title: "API keys", Active: "keys", Session: s, Notice: notice(r),
		Data: map[string]any{"Keys": views, "Created": made, "Graces": graces, "Table": table}})
}

// graces are the deadlines a roll offers for the old key.
var graces = []struct{ Value, Label string }{
	{"0s", "now"}, {"1h", "in 1 hour"}, {"24h", "in 24 hours"}, {"168h", "in 7 days"},
}

func (h *Handler) keyOps() apikey.Ops {
	return apikey.Ops{Store: h.cfg.Keys, Hasher: h.cfg.Hasher, Prefix: h.cfg.Prefix, Clock: h.clock}
}

func (h *Handler) createKey(w http.ResponseWriter, r *http.Request, s *sess) {
	k, secret, err := h.keyOps().Issue(r.Context(), s.Consumer, "", time.Time{})
	if err != nil {
		h.log.Error("portal create key", zap.String("consumer", s.Consumer), zap.Error(err))
		h.message(w, r, http.StatusServiceUnavailable, "Try again", "The key could not be created. Try again in a minute.")
		return
	}
	h.log.Info("key created", zap.String("consumer", s.Consumer), zap.String("key_id", k.ID), zap.String("by", "portal"))
	h.showKeys(w, r, s, http.StatusCreated, &created{ID: k.ID, Secret: secret})
}

// ownKey reads a key of the session's consumer by the id in the path:
// another consumer's key is as unknown as a key that does not exist.
func (h *Handler) ownKey(w http.ResponseWriter, r *http.Request, s *sess) (*apikey.Key, bool) {
	id := r.PathValue("id")
	k, err := h.cfg.Keys.GetKey(r.Context(), id)
	switch {
	case errors.Is(err, apikey.ErrNotFound) || err == nil && (k == nil || k.ConsumerID != s.Consumer):
		h.render(w, r, http.StatusNotFound, "message.html", page{Title: "Key not found", Session: s,
			Data: message{Text: "You have no key with that id."}})
		return nil, false
	case err != nil:
		h.log.Error("portal get key", zap.String("consumer", s.Consumer), zap.Error(err))
		h.message(w, r, http.StatusServiceUnavailable, "Try again", "Your key cannot be read right now. Try again in a minute.")
		return nil, false
	}
	return k, true
}

func (h *Handler) revokeKey(w http.ResponseWriter, r *http.Request, s *sess) {
	k, ok := h.ownKey(w, r, s)
	if !ok {
		return
	}
	if err := h.cfg.Keys.RevokeKey(r.Context(), k.ID); err != nil {
		h.log.Error("portal revoke key", zap.String("consumer", s.Consumer), zap.String("key_id", k.ID), zap.Error(err))
		h.message(w, r, http.StatusServiceUnavailable, "Try again", "The key could not be revoked. Try again in a minute.")
		return
	}
	h.log.Info("key revoked", zap.String("consumer", s.Consumer), zap.String("key_id", k.ID), zap.String("by", "portal"))
	http.Redirect(w, r, "/portal/keys?done=revoked", http.StatusSeeOther)
}

func (h *Handler) rollKey(w http.ResponseWriter, r *http.Request, s *sess) {
	grace, err := time.ParseDuration(r.PostFormValue("grace"))
	known := false
	for _, g := range graces {
		known = known || g.Value == r.PostFormValue("grace")
	}
	if err != nil || !known {
		h.render(w, r, http.StatusBadRequest, "message.html", page{Title: "Choose a deadline", Session: s,
			Data: message{Text: "Choose until when the old key keeps working."}})
		return
	}
	old, ok := h.ownKey(w, r, s)
	if !ok {
		return
	}
	now := h.clock()
	if err := apikey.Rotatable(old, now); err != nil {
		h.render(w, r, http.StatusConflict, "message.html", page{Title: "Cannot roll this key", Session: s,
			Data: message{Text: "This key cannot be rolled: it " + err.Error()[len("key "):] + ". Create a new key instead."}})
		return
	}
	made, secret, next, err := h.keyOps().Rotate(r.Context(), old, now.Add(grace), "", time.Time{})
	if err != nil {
		h.log.Error("portal roll key", zap.String("consumer", s.Consumer), zap.String("key_id", old.ID), zap.Error(err))
		h.message(w, r, http.StatusServiceUnavailable, "Try again", "The key could not be rolled. Try again in a minute.")
		return
	}
	h.log.Info("key rotated", zap.String("consumer", s.Consumer), zap.String("key_id", old.ID), zap.String("new_key_id", made.ID),
		zap.Time("old_key_expires_at", next.ExpiresAt), zap.String("by", "portal"))
	h.showKeys(w, r, s, http.StatusCreated, &created{ID: made.ID, Secret: secret, Replaces: old.ID, Until: next.ExpiresAt})
}

// planView is a plan as the plan page offers it.
type planView struct {
	PlanOffer
	Current bool
	Rate    string
	Quota   string
	Model   string
	// Switch: the customer may move to it here.
	Switch bool
	// Stripe: the move goes through Stripe's pages.
	Stripe bool
}

func (h *Handler) planPage(w http.ResponseWriter, r *http.Request, s *sess) {
	h.render(w, r, http.StatusOK, "plan.html", page{Title: "Plan", Active: "plan", Session: s, Notice: notice(r),
		Data: map[string]any{"Plans": h.offers(s), "Stripe": h.cfg.Billing != nil && s.consumer.StripeCustomerID != ""}})
}

// offers are the plans the plan page shows: the current one first when
// the operator does not list it.
func (h *Handler) offers(s *sess) []planView {
	st := h.settings()
	var out []planView
	listed := false
	for _, o := range st.Plans {
		p, ok := h.plan(o.Plan)
		if !ok {
			continue
		}
		v := planView{PlanOffer: o, Current: o.Plan == s.consumer.Plan, Rate: rateWords(p.Rate), Quota: quotaWords(p), Model: modelWords(p.Model)}
		// With Stripe, a plan with a Stripe price is reached through
		// Checkout or the customer portal; without one, only directly.
		v.Switch = !v.Current && (o.SelfServe || h.cfg.Billing != nil && len(p.StripePrices) > 0)
		v.Stripe = h.cfg.Billing != nil && len(p.StripePrices) > 0
		listed = listed || v.Current
		out = append(out, v)
	}
	if !listed {
		if p, ok := h.plan(s.consumer.Plan); ok {
			out = append([]planView{{PlanOffer: PlanOffer{Plan: p.Name}, Current: true, Rate: rateWords(p.Rate), Quota: quotaWords(p), Model: modelWords(p.Model)}}, out...)
		}
	}
	return out
}

func (h *Handler) changePlan(w http.ResponseWriter, r *http.Request, s *sess) {
	name := r.PostFormValue("plan")
	var offer *planView
	for _, v := range h.offers(s) {
		if v.Plan == name && v.Switch {
			offer = &v
			break
		}
	}
	if offer == nil {
		h.render(w, r, http.StatusBadRequest, "message.html", page{Title: "Plan not offered", Session: s,
			Data: message{Text: "You cannot switch to plan “" + name + "” here. Ask your provider."}})
		return
	}
	if offer.Stripe {
		back := h.settings().PublicURL + "/portal/plan"
		u, err := h.cfg.Billing.Checkout(r.Context(), s.consumer, name, back)
		if err != nil {
			h.log.Error("portal checkout", zap.String("consumer", s.Consumer), zap.String("plan", name), zap.Error(err))
			h.message(w, r, http.StatusServiceUnavailable, "Try again", "Checkout cannot start right now. Try again in a minute.")
			return
		}
		http.Redirect(w, r, u, http.StatusSeeOther)
		return
	}
	c, err := h.cfg.Keys.GetConsumer(r.Context(), s.Consumer)
	if errors.Is(err, apikey.ErrNotFound) {
		// A consumer of the config file: the store's copy overrides it,
		// as a Stripe webhook's change does.
		cp := *s.consumer
		c, err = &cp, nil
	}
	if err == nil {
		next := *c
		next.Plan = name
		err = h.cfg.Keys.PutConsumer(r.Context(), &next)
	}
	if err != nil {
		h.log.Error("portal change plan", zap.String("consumer", s.Consumer), zap.String("plan", name), zap.Error(err))
		h.message(w, r, http.StatusServiceUnavailable, "Try again", "Your plan could not be changed. Try again in a minute.")
		return
	}
	h.log.Info("consumer plan changed", zap.String("consumer", s.Consumer), zap.String("from", s.consumer.Plan), zap.String("plan", name), zap.String("by", "portal"))
	http.Redirect(w, r, "/portal/?done=plan", http.StatusSeeOther)
}

func (h *Handler) manageBilling(w http.ResponseWriter, r *http.Request, s *sess) {
	if h.cfg.Billing == nil {
		h.render(w, r, http.StatusNotFound, "message.html", page{Title: "No billing account", Session: s,
			Data: message{Text: "Billing is not managed online for this service."}})
		return
	}
	u, err := h.cfg.Billing.CustomerPortal(r.Context(), s.consumer, h.settings().PublicURL+"/portal/plan")
	if err != nil {
		h.log.Error("portal billing", zap.String("consumer", s.Consumer), zap.Error(err))
		h.message(w, r, http.StatusServiceUnavailable, "Try again", "Billing cannot be opened right now. Try again in a minute.")
		return
	}
	http.Redirect(w, r, u, http.StatusSeeOther)
}
