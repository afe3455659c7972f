// Package envoyclient is a client that calls levy the way Envoy's ext_authz, ratelimit and gRPC
// access-log filters do. It is the client `levy check` ships, and the one levy's tests drive
// levy with end to end, without an Envoy binary (envoytest starts a loopback server for them).
//
// It mirrors, as of go-control-plane v1.40 and the Envoy sources they belong to:
//
//   - check_request_utils.cc (what goes into a CheckRequest), ext_authz_grpc_impl.cc and the
//     HTTP ext_authz filter (how a CheckResponse, an RPC error or a timeout change the request
//     and the response): [AuthzClient], [BuildCheckRequest].
//   - the HTTP ratelimit filter and ratelimit_headers.cc (how a RateLimitResponse becomes a 429,
//     x-envoy-ratelimited and the DRAFT_VERSION_03 x-ratelimit-* headers): [RateLimitClient].
//   - router_ratelimit.cc and the ratelimit filter's populateRateLimitDescriptors (which
//     rate_limits entries apply to a route, and the descriptor each action builds or drops):
//     [ApplicableRateLimits], [RateLimitDescriptor].
//   - grpc_access_logger.h and the HTTP gRPC access logger (one stream per worker, identifier on
//     the first message only, batches that are cleared whether or not they were delivered):
//     [AccessLogger], [HTTPLogEntry].
//
// Only the behaviour that changes an outcome levy cares about is modelled; each type says what
// it leaves out.
package envoyclient

import (
	"crypto/rand"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Header is one request header as the client sent it (case preserved; duplicates allowed).
type Header struct{ Name, Value string }

// Headers is an ordered, case-insensitive header list as Envoy holds it (lower-case names).
// Duplicates are separate entries, as in Envoy's HeaderMapImpl.
type Headers []Header

// Get returns the first value of name, or "" if there is none.
func (h Headers) Get(name string) string {
	name = strings.ToLower(name)
	for _, e := range h {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// Values returns every value of name in order.
func (h Headers) Values(name string) []string {
	name = strings.ToLower(name)
	var out []string
	for _, e := range h {
		if e.Name == name {
			out = append(out, e.Value)
		}
	}
	return out
}

// Has reports whether name is present.
func (h Headers) Has(name string) bool {
	name = strings.ToLower(name)
	for _, e := range h {
		if e.Name == name {
			return true
		}
	}
	return false
}

// clone returns a copy that can be changed without touching h.
func (h Headers) clone() Headers {
	if h == nil {
		return nil
	}
	return append(Headers(nil), h...)
}

// add appends an entry (HeaderMap::addCopy).
func (h *Headers) add(name, value string) {
	*h = append(*h, Header{Name: strings.ToLower(name), Value: value})
}

// remove deletes every entry of name (HeaderMap::remove).
func (h *Headers) remove(name string) {
	name = strings.ToLower(name)
	out := (*h)[:0]
	for _, e := range *h {
		if e.Name != name {
			out = append(out, e)
		}
	}
	*h = out
}

// set replaces every entry of name by one entry at the end (HeaderMap::setCopy, which removes and
// then adds since envoy.reloadable_features.http_set_copy_replace_all_headers).
func (h *Headers) set(name, value string) {
	h.remove(name)
	h.add(name, value)
}

// appendValue appends value to the first entry of name with a "," in between, or adds the header
// if it is absent (HeaderMap::appendCopy).
func (h *Headers) appendValue(name, value string) {
	name = strings.ToLower(name)
	for i, e := range *h {
		if e.Name == name {
			if e.Value == "" {
				(*h)[i].Value = value
			} else {
				(*h)[i].Value = e.Value + "," + value
			}
			return
		}
	}
	h.add(name, value)
}

// byteSize is HeaderMap::byteSize: the sum of key and value lengths.
func (h Headers) byteSize() uint64 {
	var n uint64
	for _, e := range h {
		n += uint64(len(e.Name) + len(e.Value))
	}
	return n
}

// joined returns every value of name joined with "," (HeaderUtility::getAllOfHeaderAsString),
// and whether the header was present.
func (h Headers) joined(name string) (string, bool) {
	vs := h.Values(name)
	if len(vs) == 0 {
		return "", false
	}
	return strings.Join(vs, ","), true
}

// sanitizeUTF8 is MessageUtil::sanitizeUtf8String: every byte that is not part of a structurally
// valid UTF-8 sequence becomes '!'.
func sanitizeUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size <= 1 {
			b.WriteByte('!')
			i++
			continue
		}
		b.WriteString(s[i : i+size])
		i += size
	}
	return b.String()
}

// newUUID returns a random RFC 4122 version 4 UUID in Envoy's lower-case text form, as the HCM's
// default request-id extension generates for x-request-id.
func newUUID() string {
	var u [16]byte
	_, _ = rand.Read(u[:]) // crypto/rand.Read never returns an error.
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}
