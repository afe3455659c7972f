package billing

import (
	"net/http"
	"testing"
	"time"

	"go.uber.org/zap"
)

// FuzzWebhook delivers correctly signed payloads of any shape: the
// webhook port faces the internet, and a signature proves only who sent
// the bytes, not that levy can read them. Whatever the body, the handler
// answers a 2xx or a 4xx and never panics; an event it cannot read is
// refused with 400, so Stripe shows it as failed instead of levy
// forgetting it silently.
func FuzzWebhook(f *testing.F) {
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"id":"evt_1","object":"event","type":"customer.subscription.updated","data":{"object":{"object":"subscription","customer":{"id":"cus_acme"},"items":{"data":[{"price":null}]}}}}`))
	f.Add([]byte(`{"id":"evt_2","object":"event","type":"invoice.payment_failed","data":{"object":"not an object"}}`))
	f.Add([]byte(`{"id":"evt_3","object":"event","type":"customer.subscription.deleted","created":-1,"data":{"object":{"customer":"cus_acme","current_period_start":1e308}}}`))
	t := &testing.T{}
	f.Add(subCreated("evt_4", evT1, "price_pro_monthly").json(t))
	f.Add(invoiceEvent(t, "evt_5", "invoice.paid", evT1, "cus_acme"))
	f.Fuzz(func(t *testing.T, payload []byte) {
		fx := newWebhookFixture(t, webhookOptions{secret: webhookTestSecret, fallback: "free", action: PaymentFailedSuspend,
			grace: time.Hour, log: zap.NewNop()}, acme)
		rec := fx.deliver(t, http.MethodPost, payload, signStripe(payload, webhookTestSecret, time.Now()))
		if rec.Code >= 500 {
			t.Fatalf("a signed payload got %d: %s", rec.Code, rec.Body)
		}
		if rec.Code != http.StatusOK && rec.Code != http.StatusBadRequest {
			t.Fatalf("status %d, want 200 or 400: %s", rec.Code, rec.Body)
		}
	})
}
