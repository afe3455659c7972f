package stripetest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"time"
)

// Event is a meter event the proxy accepted.
type Event struct {
	Identifier string
	EventName  string
	Customer   string // payload[stripe_customer_id]
	Value      int64  // payload[value]: levy sends whole units, the proxy takes no others
	Timestamp  time.Time
	// Received is when the proxy accepted it (its clock): Stripe cancels
	// an event only within 24 hours of receiving it.
	Received time.Time
	// Cancelled: a meter event adjustment took it out of the summaries.
	Cancelled bool
}

// cancelWithin is how long after receiving an event Stripe lets it be
// cancelled.
const cancelWithin = 24 * time.Hour

// MeterID is the id the proxy gives the meter of eventName.
func MeterID(eventName string) string { return "mtr_" + eventName }

// Meter registers a billing meter for eventName (a meter is also listed
// once an event was sent for its name) and returns its id.
func (s *Stripe) Meter(eventName string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.meters[eventName] = true
	return MeterID(eventName)
}

// SetClock sets the proxy's clock (default time.Now): when events are
// received, and whether one may still be cancelled.
func (s *Stripe) SetClock(now func() time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clock = now
}

// Events returns the meter events accepted and not dropped, in the order
// they were accepted; cancelled ones are marked.
func (s *Stripe) Events() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Event, 0, len(s.order))
	for _, id := range s.order {
		if e := s.events[id]; e != nil {
			out = append(out, *e)
		}
	}
	return out
}

// Drop removes an accepted event as if Stripe never had it: it leaves the
// summaries and its identifier may be sent again. It reports whether there
// was one.
func (s *Stripe) Drop(identifier string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.events[identifier] == nil {
		return false
	}
	delete(s.events, identifier)
	for i, id := range s.order {
		if id == identifier {
			s.order = append(s.order[:i], s.order[i+1:]...)
			break
		}
	}
	return true
}

// apiError is a Stripe error answer.
type apiError struct {
	status                    int
	typ, code, param, message string
}

func (e apiError) write(w http.ResponseWriter) {
	body := map[string]string{"type": e.typ, "message": e.message}
	if e.code != "" {
		body["code"] = e.code
	}
	if e.param != "" {
		body["param"] = e.param
	}
	writeJSON(w, e.status, map[string]any{"error": body})
}

func invalid(param, message string) *apiError {
	return &apiError{status: http.StatusBadRequest, typ: "invalid_request_error", param: param, message: message}
}

// duplicate is Stripe's answer to an identifier it already has.
var duplicate = apiError{status: http.StatusBadRequest, typ: "invalid_request_error", param: "identifier",
	message: "An event with this identifier already exists."}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// meterEvent takes POST /v1/billing/meter_events: an identifier Stripe
// already has is refused; otherwise stripe-mock checks the request, and
// what it accepts is recorded.
func (s *Stripe) meterEvent(w http.ResponseWriter, r *http.Request) {
	ev, bad := s.parseEvent(r.Form)
	if bad != nil {
		bad.write(w)
		return
	}
	if !s.reserve(ev.Identifier) {
		duplicate.write(w)
		return
	}
	rec := &statusRecorder{ResponseWriter: w, status: 200}
	s.mock.ServeHTTP(rec, r)
	s.record(ev, rec.status == http.StatusOK)
}

func (s *Stripe) parseEvent(form url.Values) (*Event, *apiError) {
	ev := &Event{Identifier: form.Get("identifier"), EventName: form.Get("event_name"), Customer: form.Get("payload[stripe_customer_id]")}
	if ev.EventName == "" {
		return nil, invalid("event_name", "Missing required param: event_name.")
	}
	if ev.Customer == "" {
		return nil, invalid("payload", "The payload has no stripe_customer_id.")
	}
	v, err := strconv.ParseInt(form.Get("payload[value]"), 10, 64)
	if err != nil {
		return nil, invalid("payload[value]", "The payload's value must be a whole number.")
	}
	ev.Value = v
	s.mu.Lock()
	now := s.clock()
	if ev.Identifier == "" { // Stripe makes one up
		s.generated++
		ev.Identifier = fmt.Sprintf("stripetest_%d", s.generated)
	}
	s.mu.Unlock()
	ev.Received, ev.Timestamp = now, now
	if ts := form.Get("timestamp"); ts != "" {
		sec, err := strconv.ParseInt(ts, 10, 64)
		if err != nil {
			return nil, invalid("timestamp", "Invalid integer: "+ts)
		}
		ev.Timestamp = time.Unix(sec, 0).UTC()
	}
	return ev, nil
}

// reserve claims an identifier for an event in flight; false when Stripe
// has it already (or another request is sending it).
func (s *Stripe) reserve(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.events[id]; ok {
		return false
	}
	s.events[id] = nil // in flight
	return true
}

// record keeps an accepted event, or frees the identifier of a refused one.
func (s *Stripe) record(ev *Event, accepted bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !accepted {
		delete(s.events, ev.Identifier)
		return
	}
	s.events[ev.Identifier] = ev
	s.order = append(s.order, ev.Identifier)
	s.meters[ev.EventName] = true
}

// meterJSON is a billing.meter object.
func meterJSON(eventName string) map[string]any {
	return map[string]any{
		"id": MeterID(eventName), "object": "billing.meter", "event_name": eventName, "display_name": eventName,
		"status": "active", "livemode": false, "created": 0, "updated": 0,
		"default_aggregation": map[string]string{"formula": "sum"},
		"customer_mapping":    map[string]string{"event_payload_key": "stripe_customer_id", "type": "by_id"},
		"value_settings":      map[string]string{"event_payload_key": "value"},
		"event_time_window":   nil,
		"status_transitions":  map[string]any{"deactivated_at": nil},
	}
}

// listMeters answers GET /v1/billing/meters: every meter, on one page.
func (s *Stripe) listMeters(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	names := make([]string, 0, len(s.meters))
	for n := range s.meters {
		names = append(names, n)
	}
	s.mu.Unlock()
	sort.Strings(names)
	data := make([]any, 0, len(names))
	for _, n := range names {
		data = append(data, meterJSON(n))
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "url": r.URL.Path, "has_more": false, "data": data})
}

// meter finds a meter's event name by its id, answering 404 itself.
func (s *Stripe) meter(w http.ResponseWriter, id string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for n := range s.meters {
		if MeterID(n) == id {
			return n, true
		}
	}
	apiError{status: http.StatusNotFound, typ: "invalid_request_error", code: "resource_missing", param: "id",
		message: "No such billing meter: '" + id + "'"}.write(w)
	return "", false
}

func (s *Stripe) getMeter(w http.ResponseWriter, r *http.Request) {
	if name, ok := s.meter(w, r.PathValue("id")); ok {
		writeJSON(w, http.StatusOK, meterJSON(name))
	}
}

// eventSummaries answers GET /v1/billing/meters/{id}/event_summaries as
// Stripe documents it: the sum of the values of the customer's events for
// the meter whose timestamp is in [start_time, end_time), both on minute
// boundaries, as one summary.
func (s *Stripe) eventSummaries(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	name, ok := s.meter(w, id)
	if !ok {
		return
	}
	customer := r.Form.Get("customer")
	if customer == "" {
		invalid("customer", "Missing required param: customer.").write(w)
		return
	}
	start, bad := minuteParam(r.Form, "start_time")
	if bad == nil {
		var end int64
		if end, bad = minuteParam(r.Form, "end_time"); bad == nil {
			if end <= start {
				invalid("end_time", "end_time must be after start_time.").write(w)
				return
			}
			sum := s.sum(name, customer, start, end)
			summary := map[string]any{"id": fmt.Sprintf("mtrusg_%s_%s_%d_%d", id, customer, start, end),
				"object": "billing.meter_event_summary", "aggregated_value": sum, "start_time": start, "end_time": end,
				"meter": id, "livemode": false}
			writeJSON(w, http.StatusOK, map[string]any{"object": "list", "url": r.URL.Path, "has_more": false, "data": []any{summary}})
			return
		}
	}
	bad.write(w)
}

func minuteParam(form url.Values, name string) (int64, *apiError) {
	v := form.Get(name)
	if v == "" {
		return 0, invalid(name, "Missing required param: "+name+".")
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, invalid(name, "Invalid integer: "+v)
	}
	if n%60 != 0 {
		return 0, invalid(name, name+" must be aligned with minute boundaries.")
	}
	return n, nil
}

func (s *Stripe) sum(eventName, customer string, start, end int64) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var sum int64
	for _, id := range s.order {
		e := s.events[id]
		if e == nil || e.Cancelled || e.EventName != eventName || e.Customer != customer {
			continue
		}
		if ts := e.Timestamp.Unix(); ts >= start && ts < end {
			sum += e.Value
		}
	}
	return sum
}

// adjustment answers POST /v1/billing/meter_event_adjustments: type
// cancel takes the event cancel[identifier] names out of the summaries,
// within 24 hours of its receipt.
func (s *Stripe) adjustment(w http.ResponseWriter, r *http.Request) {
	f := r.Form
	name, id := f.Get("event_name"), f.Get("cancel[identifier]")
	switch {
	case f.Get("type") != "cancel":
		invalid("type", "type must be cancel.").write(w)
		return
	case name == "":
		invalid("event_name", "Missing required param: event_name.").write(w)
		return
	case id == "":
		invalid("cancel[identifier]", "Missing required param: cancel[identifier].").write(w)
		return
	}
	if bad := s.cancel(name, id); bad != nil {
		bad.write(w)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "billing.meter_event_adjustment", "event_name": name,
		"type": "cancel", "cancel": map[string]string{"identifier": id}, "status": "complete", "livemode": false})
}

func (s *Stripe) cancel(eventName, id string) *apiError {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.events[id]
	if e == nil || e.EventName != eventName {
		return invalid("cancel[identifier]", "No meter event with identifier "+id+" for event_name "+eventName+".")
	}
	if s.clock().Sub(e.Received) > cancelWithin {
		return invalid("cancel[identifier]", "You can only cancel events within 24 hours of Stripe receiving them.")
	}
	e.Cancelled = true
	return nil
}
