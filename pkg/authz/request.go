package authz

import (
	"context"
	"strings"
	"sync"
	"unicode/utf8"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/levyhq/levy/pkg/wire"
)

// Request is what a decision reads of Envoy's CheckRequest: the HTTP
// request's headers and path, and nothing else. levy's gRPC server reads
// it straight off the wire (Decode), skipping the rest of the message
// (the peers, the time, the context extensions), as protobuf skips
// unknown fields.
//
// It earns its keep: reading Envoy's CheckRequest into an
// authv3.CheckRequest, even by hand (every field, a map of every header),
// cost about as much CPU per Check as levy's whole decision on the local
// store. BenchmarkDecodeCheck reads the request Envoy sends into a Request
// in 1 allocation and 1.6 µs, against protobuf's 91 allocations and 11.1
// µs into an authv3.CheckRequest (the hand-written reader of every field
// it replaces took 27 and about 5.5 µs), on the 2-core VM.
type Request struct {
	// Path is the request's :path.
	Path string
	// headers are the headers map's entries, name and value pairs as they
	// came: Envoy sends the map unless encode_raw_headers is set, repeated
	// headers joined into one entry with ",". A name's last entry wins, as
	// in a protobuf map.
	headers []string
	// raw are header_map's entries, pairs likewise: encode_raw_headers
	// sends one per header line, unjoined, as raw_value.
	raw []string
}

// Header returns the value of header name (lower case, as Envoy sends
// names): the headers map's, else header_map's entries of that name
// joined with ",", as Envoy joins them into the map. "" when there is
// none.
func (r *Request) Header(name string) string {
	for i := len(r.headers) - 2; i >= 0; i -= 2 {
		if r.headers[i] == name {
			return r.headers[i+1]
		}
	}
	// Joined once, at its length: a request of thousands of lines of one
	// name (a client calling levy directly) costs a pass, not a copy of
	// the value so far for each line.
	n, size, first := 0, 0, ""
	for i := 0; i < len(r.raw); i += 2 {
		if r.raw[i] == name {
			if n == 0 {
				first = r.raw[i+1]
			}
			n, size = n+1, size+len(r.raw[i+1])
		}
	}
	if n <= 1 {
		return first
	}
	var v strings.Builder
	v.Grow(size + n - 1)
	sep := ""
	for i := 0; i < len(r.raw); i += 2 {
		if r.raw[i] == name {
			v.WriteString(sep)
			v.WriteString(r.raw[i+1])
			sep = ","
		}
	}
	return v.String()
}

// RequestOf is what a decision reads of req.
func RequestOf(req *authv3.CheckRequest) *Request {
	h := req.GetAttributes().GetRequest().GetHttp()
	r := &Request{Path: h.GetPath()}
	for k, v := range h.GetHeaders() {
		r.headers = append(r.headers, k, v)
	}
	for _, e := range h.GetHeaderMap().GetHeaders() {
		r.raw = append(r.raw, e.GetKey(), headerValue(e.GetValue(), e.GetRawValue()))
	}
	return r
}

// headerValue is a HeaderValue's value: its raw_value, which Envoy sets
// with encode_raw_headers, over its value.
func headerValue[B ~string | ~[]byte](value string, raw B) string {
	if len(raw) > 0 {
		return string(raw)
	}
	return value
}

// Field numbers on the way to the headers: CheckRequest.attributes,
// AttributeContext.request, AttributeContext.Request.http, and
// HttpRequest's headers, path and header_map, HeaderMap.headers; a map
// entry's key and value, and a HeaderValue's key, value and raw_value.
const (
	fieldAttributes = 1
	fieldRequest    = 4
	fieldHTTP       = 2
	fieldHeaders    = 3
	fieldPath       = 4
	fieldHeaderMap  = 13
	fieldMapHeaders = 1
	fieldKey        = 1
	fieldValue      = 2
	fieldRawValue   = 3
)

// Decode is levy's gRPC codec's reader of a Request (Unmarshal), from
// the message's bytes as gRPC received them: gRPC's proto codec reads one
// through protobuf's wrapper of a legacy message, which took an
// allocation and about 0.5 µs more (1.9 µs against 1.4 µs for Envoy's
// request, on the 2-core VM).
var Decode = wire.Decoder(func(b []byte, r *Request) bool { return r.Unmarshal(b) == nil })

// Reset, String and ProtoMessage make a Request a (legacy) protobuf
// message, which any gRPC proto codec reads with its Unmarshal: a server
// without levy's codec still reads Requests, and levy's codec, when its
// Decode fails, hands the message to protobuf, which hands it back.
func (r *Request) Reset() {
	clear(r.headers)
	clear(r.raw)
	r.Path, r.headers, r.raw = "", r.headers[:0], r.raw[:0]
}

func (r *Request) String() string { return "authz.Request" }

// ProtoMessage marks Request as a (legacy) protobuf message.
func (r *Request) ProtoMessage() {}

// Unmarshal reads a Request from b, a CheckRequest on the wire, as
// proto.Unmarshal would read its headers and path: the messages on the
// way to the HTTP request are walked (each occurrence, as protobuf merges
// a message field sent twice), a field of another wire type than its own
// is skipped as protobuf skips it, the strings read are checked to be
// UTF-8, and everything else is skipped unread, as protobuf skips an
// unknown field. A message the walk cannot read goes to proto.Unmarshal,
// whose error stands. The strings kept are pieces of one copy of the HTTP
// request's bytes.
func (r *Request) Unmarshal(b []byte) error {
	if r.read(b) {
		return nil
	}
	var req authv3.CheckRequest
	if err := proto.Unmarshal(b, &req); err != nil {
		return err
	}
	*r = *RequestOf(&req)
	return nil
}

// read is readRequest into a reset r. The walk is fuzzed, but a panic in
// it costs that one request a reading by protobuf, never the process.
func (r *Request) read(b []byte) (ok bool) {
	defer func() {
		if recover() != nil {
			wire.Recovered.Add(1)
			r.Reset()
			ok = false
		}
	}()
	r.Reset()
	return readRequest(b, r)
}

// readRequest reads b into r, or returns false when b is malformed on
// the way to the headers or a string there is not UTF-8.
func readRequest(b []byte, r *Request) bool {
	var (
		s    string // the HTTP request's bytes, copied
		base int    // where s starts in b
	)
	str := func(f wire.Field) (string, bool) {
		v := s[f.Off-base : f.Off-base+f.N]
		return v, utf8.ValidString(v)
	}
	// entry reads a map entry or, with rawValue, a HeaderValue.
	entry := func(f wire.Field, rawValue bool) (k, v string, ok bool) {
		var raw string // bytes: not checked
		ok = each(b, f, func(g wire.Field) bool {
			if g.WireType != protowire.BytesType {
				return true
			}
			ok := true
			switch {
			case g.Num == fieldKey:
				k, ok = str(g)
			case g.Num == fieldValue:
				v, ok = str(g)
			case g.Num == fieldRawValue && rawValue:
				raw = s[g.Off-base : g.Off-base+g.N]
			}
			return ok
		})
		return k, headerValue(v, raw), ok
	}
	http := func(f wire.Field) bool {
		s, base = string(f.Bytes(b)), f.Off
		return each(b, f, func(g wire.Field) bool {
			if g.WireType != protowire.BytesType {
				return true
			}
			switch g.Num {
			case fieldHeaders:
				k, v, ok := entry(g, false)
				r.headers = append(r.headers, k, v)
				return ok
			case fieldPath:
				var ok bool
				r.Path, ok = str(g)
				return ok
			case fieldHeaderMap:
				return each(b, g, func(h wire.Field) bool {
					if h.Num != fieldMapHeaders || h.WireType != protowire.BytesType {
						return true
					}
					k, v, ok := entry(h, true)
					r.raw = append(r.raw, k, v)
					return ok
				})
			}
			return true
		})
	}
	// into walks a message of b, going into its field num (a message)
	// with next.
	into := func(num protowire.Number, next func(wire.Field) bool) func(wire.Field) bool {
		return func(f wire.Field) bool {
			return each(b, f, func(g wire.Field) bool {
				return g.Num != num || g.WireType != protowire.BytesType || next(g)
			})
		}
	}
	return into(fieldAttributes, into(fieldRequest, into(fieldHTTP, http)))(wire.Field{N: len(b)})
}

// each calls fn with each field of the message in f, and returns false
// when one is malformed or fn says so.
func each(b []byte, f wire.Field, fn func(wire.Field) bool) bool {
	end := f.Off + f.N
	for i := f.Off; i < end; {
		g, j, ok := wire.Next(b[:end], i)
		if !ok || !fn(g) {
			return false
		}
		i = j
	}
	return true
}

// requests recycles Requests (their headers' backing arrays) between
// calls: a Request's strings are never reused, only the slice holding them.
var requests = sync.Pool{New: func() any { return &Request{headers: make([]string, 0, 64)} }}

// Register registers s as the Authorization service of g, reading each
// CheckRequest as a Request rather than as an authv3.CheckRequest: what
// levy serve runs. Any gRPC proto codec reads a Request; levy's
// (server.GRPCOptions's) takes Decode's quicker way.
// authv3.RegisterAuthorizationServer also serves s, reading the whole
// message.
func Register(g grpc.ServiceRegistrar, s *Server) { RegisterFunc(g, s.serve) }

// RegisterFunc registers check as the Authorization service's Check,
// each request read as Register reads it: for a server that is not levy
// but should read requests as levy does (the benchmarks' no-op).
func RegisterFunc(g grpc.ServiceRegistrar, check func(context.Context, *Request) (*authv3.CheckResponse, error)) {
	handler := func(_ any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		r := requests.Get().(*Request)
		defer func() {
			if cap(r.headers) <= 1024 && cap(r.raw) <= 1024 { // a request of very many headers leaves its arrays to the collector
				r.Reset()
				requests.Put(r)
			}
		}()
		if err := dec(r); err != nil {
			return nil, err
		}
		if interceptor == nil {
			return check(ctx, r)
		}
		return interceptor(ctx, r, &grpc.UnaryServerInfo{FullMethod: checkFullMethod},
			func(ctx context.Context, req any) (any, error) { return check(ctx, req.(*Request)) })
	}
	desc := authv3.Authorization_ServiceDesc
	desc.HandlerType = (*any)(nil) // nothing to implement: the handler calls check
	desc.Methods = []grpc.MethodDesc{{MethodName: "Check", Handler: handler}}
	g.RegisterService(&desc, nil)
}

// checkFullMethod is Check's gRPC method name, for interceptors.
const checkFullMethod = "/envoy.service.auth.v3.Authorization/Check"
