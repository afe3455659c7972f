// Package billing connects levy to Stripe: it exports the usage ledger's
// closed windows as billing meter events (one per consumer, meter and
// window, with an identifier that makes a retry unable to bill twice),
// applies Stripe webhooks that change a consumer's plan, and reconciles the
// ledger with Stripe's meter event summaries (levy billing reconcile).
package billing
