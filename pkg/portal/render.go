package portal

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/plan"
)

// page is what every template gets.
type page struct {
	Title string
	// Active names the nav entry of this page.
	Active  string
	Session *sess
	// Notice is a line shown above the page (a change that was made).
	Notice string
	Data   any
}

// message is the data of message.html.
type message struct {
	Text string
	// SignIn offers the sign-in page.
	SignIn bool
}

// CSRF is the session's CSRF token for forms.
func (p page) CSRF() string {
	if p.Session == nil {
		return ""
	}
	return p.Session.CSRF
}

// Can reports whether the session has scope.
func (p page) Can(scope string) bool { return p.Session != nil && p.Session.has(scope) }

var funcs = template.FuncMap{
	"date": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2 Jan 2006")
	},
	"datetime": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2 Jan 2006 15:04 UTC")
	},
	"iso":   func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"units": groupDigits,
}

var (
	tmplOnce sync.Once
	tmpls    map[string]*template.Template
	tmplErr  error
)

// templates parses the embedded templates once: each page with the
// layout.
func templates() (map[string]*template.Template, error) {
	tmplOnce.Do(func() {
		tmpls = map[string]*template.Template{}
		names, err := files.ReadDir("templates")
		if err != nil {
			tmplErr = err
			return
		}
		for _, n := range names {
			if n.Name() == "layout.html" {
				continue
			}
			t, err := template.New(n.Name()).Funcs(funcs).ParseFS(files, "templates/layout.html", "templates/"+n.Name())
			if err != nil {
				tmplErr = fmt.Errorf("parse %s: %w", n.Name(), err)
				return
			}
			tmpls[n.Name()] = t
		}
	})
	return tmpls, tmplErr
}

// render writes a page, whole or not at all.
func (h *Handler) render(w http.ResponseWriter, r *http.Request, status int, name string, p page) {
	ts, err := templates()
	var buf bytes.Buffer
	if err == nil {
		t, ok := ts[name]
		if !ok {
			err = fmt.Errorf("no template %s", name)
		} else {
			err = t.ExecuteTemplate(&buf, "layout", p)
		}
	}
	if err != nil {
		h.log.Error("render portal page", zap.String("page", name), zap.String("path", r.URL.Path), zap.Error(err))
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusInternalServerError)
		w.Write([]byte("The portal could not show this page.\n"))
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// message answers a page that says one thing.
func (h *Handler) message(w http.ResponseWriter, r *http.Request, status int, title, text string) {
	h.render(w, r, status, "message.html", page{Title: title, Data: message{Text: text, SignIn: status != http.StatusOK}})
}

// groupDigits writes n with thousands separators: 100,000.
func groupDigits(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// rateWords says a plan's rate in words: "100 requests per second, bursts
// of 200".
func rateWords(r *plan.Rate) string {
	if r == nil {
		return "No rate limit."
	}
	noun := "requests"
	if r.Requests == 1 {
		noun = "request"
	}
	out := groupDigits(r.Requests) + " " + noun + " per " + durationWords(r.Per)
	if r.Burst > 0 && r.Burst != r.Requests {
		out += ", bursts of " + groupDigits(r.Burst)
	}
	return out
}

func durationWords(d time.Duration) string {
	switch d {
	case time.Second:
		return "second"
	case time.Minute:
		return "minute"
	case time.Hour:
		return "hour"
	case 24 * time.Hour:
		return "day"
	}
	return d.String()
}

// quotaWords says a plan's quota in words.
func quotaWords(p *plan.Plan) string {
	q := p.Quota
	if q == nil {
		return "No quota: usage is counted per calendar month."
	}
	per := string(q.Period)
	if q.Enforcement == plan.Hard {
		return groupDigits(q.Requests) + " units per " + per + "; requests past it are refused until the next period."
	}
	out := groupDigits(q.Requests) + " units included per " + per + "; more are billed as overage."
	if q.Requests == 0 {
		out = "Every unit is billed."
	}
	if q.Cap > 0 {
		out += " Spend cap: " + groupDigits(q.Cap) + " units per " + per + ", past it requests are refused."
	}
	return out
}

// meter is one progress bar of the overview.
type meter struct {
	Label     string
	Used, Max int64
	// Value is Used clamped to Max, for <progress>.
	Value   int64
	Percent int64
	Over    bool
}

func newMeter(label string, used, maxUnits int64) meter {
	m := meter{Label: label, Used: used, Max: maxUnits, Value: min(max(used, 0), maxUnits)}
	if maxUnits > 0 {
		m.Percent = used * 100 / maxUnits
	}
	m.Over = used >= maxUnits
	return m
}
