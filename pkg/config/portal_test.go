package config

import (
	"strings"
	"testing"
	"time"
)

func TestPortalSettingsAreValidatedWithTheirLines(t *testing.T) {
	const plans = "plans:\n  free: {model: freemium, rate: {requests: 1, per: 1s}, quota: {requests: 10, period: month}}\n"
	tests := []struct {
		name, give, want string
	}{
		{"enabled without url", "portal:\n  enabled: true\n", "t.yaml:3: portal.public_url: the portal is enabled but has no public_url"},
		{"url not http", "portal:\n  public_url: ftp://x\n", "t.yaml:4: portal.public_url: \"ftp://x\": want an http or https URL"},
		{"url with query", "portal:\n  public_url: https://x/?a=1\n", "without user, query or fragment"},
		{"link ttl too long", "portal:\n  public_url: https://x\n  link_ttl: 25h\n", "t.yaml:5: portal.link_ttl: 25h0m0s: want a duration from 1s to 24h0m0s"},
		{"session ttl too short", "portal:\n  public_url: https://x\n  session_ttl: 10s\n", "portal.session_ttl: 10s"},
		{"unknown plan", "portal:\n  public_url: https://x\n  plans:\n    - {plan: gold}\n", "portal.plans[0].plan: \"gold\" is not a plan of plans (known: free)"},
		{"plan twice", "portal:\n  public_url: https://x\n  plans:\n    - {plan: free}\n    - {plan: free}\n", "portal.plans[1].plan: \"free\" is listed twice"},
		{"unknown key", "portal:\n  public_url: https://x\n  plans:\n    - {plan: free, switch: true}\n", "unknown key"},
		{"contact with a name", "portal:\n  public_url: https://x\n  contact: Billing <billing@example.com>\n", "t.yaml:5: portal.contact: \"Billing <billing@example.com>\": want an email address"},
		{"contact not a URL", "portal:\n  public_url: https://x\n  contact: ftp://example.com/help\n", "t.yaml:5: portal.contact"},
		{"contact of neither", "portal:\n  public_url: https://x\n  contact: call us\n", "t.yaml:5: portal.contact"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(plans+tt.give), "t.yaml")
			if err == nil {
				err = c.Validate()
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestPortalDefaultsOnWithAPublicURLAndOffWithout(t *testing.T) {
	const plans = "plans:\n  free: {model: freemium, rate: {requests: 1, per: 1s}, quota: {requests: 10, period: month}}\n"
	off, err := Parse([]byte(plans), "t.yaml")
	if err != nil || off.Validate() != nil {
		t.Fatal(err)
	}
	if off.Portal.PortalEnabled() || time.Duration(off.Portal.LinkTTL) != DefaultLinkTTL || time.Duration(off.Portal.SessionTTL) != DefaultSessionTTL {
		t.Fatalf("defaults: %+v", off.Portal)
	}
	on, err := Parse([]byte(plans+"portal:\n  public_url: https://api.example.com\n  key_sign_in: true\n  plans:\n    - {plan: free, price: Free, self_serve: true}\n"), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := on.Validate(); err != nil {
		t.Fatal(err)
	}
	if !on.Portal.PortalEnabled() || !on.Portal.KeySignIn || !on.Portal.Plans[0].SelfServe {
		t.Fatalf("portal: %+v", on.Portal)
	}
}

func TestPortalContactIsAnEmailAddressOrAURL(t *testing.T) {
	const plans = "plans:\n  free: {model: freemium, rate: {requests: 1, per: 1s}, quota: {requests: 10, period: month}}\n"
	for _, contact := range []string{"billing@example.com", "https://example.com/support", "http://help.example.com"} {
		c, err := Parse([]byte(plans+"portal:\n  public_url: https://x\n  contact: "+contact+"\n"), "t.yaml")
		if err == nil {
			err = c.Validate()
		}
		if err != nil || c.Portal.Contact != contact {
			t.Errorf("contact %q: %v", contact, err)
		}
	}
}
