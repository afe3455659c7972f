package authz

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/levyhq/levy/pkg/wire"
)

// Decode reads a CheckRequest (v) from b as proto.Unmarshal would, or
// returns false and leaves it to protobuf. Generic protobuf decoding of
// Envoy's CheckRequest, a map of every request header above all, took a
// quarter of levy's CPU per Check. Here every string is a piece of one
// copy of the request and each map is made at its final size. It reads
// what Envoy's ext_authz filter sends: the source and destination peers
// with socket addresses, the request's time and HTTP attributes, the
// context extensions and empty metadata contexts; a request with anything
// else (metadata, a TLS session, a header_map, a named port, a field Envoy
// adds later) goes to protobuf whole.
func Decode(b []byte, v any) bool {
	r, ok := v.(*authv3.CheckRequest)
	return ok && r != nil && decodeCheck(b, r)
}

// The fields Decode reads, by message.
var (
	checkFields      = wire.Fields{1: wire.Message}                                                                                         // CheckRequest
	attributesFields = wire.Fields{1: wire.Message, 2: wire.Message, 4: wire.Message, 10: wire.Message, 11: wire.Message, 13: wire.Message} // AttributeContext
	metadataFields   = wire.Fields{}                                                                                                        // only an empty Metadata: Envoy's, unless metadata_context_namespaces name some
	peerFields       = wire.Fields{1: wire.Message, 2: wire.String, 3: wire.Message, 4: wire.String, 5: wire.String}
	addressFields    = wire.Fields{1: wire.Message} // socket_address only
	socketFields     = wire.Fields{1: wire.Varint, 2: wire.String, 3: wire.Varint, 5: wire.String, 6: wire.Varint, 7: wire.String}
	requestFields    = wire.Fields{1: wire.Message, 2: wire.Message}
	timeFields       = wire.Fields{1: wire.Varint, 2: wire.Varint}
	httpFields       = wire.Fields{1: wire.String, 2: wire.String, 3: wire.Message, 4: wire.String, 5: wire.String,
		6: wire.String, 7: wire.String, 8: wire.String, 9: wire.Varint, 10: wire.String, 11: wire.String, 12: wire.Bytes}
	entryFields = wire.Fields{1: wire.String, 2: wire.String} // a map<string, string> entry
)

// checkSizes is what a request holds that is made at its final size: the
// entries of each map.
type checkSizes struct{ headers, extensions, sourceLabels, destLabels int }

// checkCheck checks that b is a CheckRequest of the fields Decode reads,
// and counts its maps' entries.
func checkCheck(b []byte) (checkSizes, bool) {
	var n checkSizes
	entry := func(f wire.Field) bool { return wire.Check(b, f.Off, f.N, entryFields, nil) }
	address := func(f wire.Field) bool { return wire.Check(b, f.Off, f.N, socketFields, nil) }
	peer := func(labels *int) func(wire.Field) bool {
		return func(f wire.Field) bool {
			if f.Num == 3 {
				*labels++
				return entry(f)
			}
			return wire.Check(b, f.Off, f.N, addressFields, address)
		}
	}
	http := func(f wire.Field) bool { // headers, the one message field
		n.headers++
		return entry(f)
	}
	request := func(f wire.Field) bool {
		if f.Num == 1 {
			return wire.Check(b, f.Off, f.N, timeFields, nil)
		}
		return wire.Check(b, f.Off, f.N, httpFields, http)
	}
	attributes := func(f wire.Field) bool {
		switch f.Num {
		case 1:
			return wire.Check(b, f.Off, f.N, peerFields, peer(&n.sourceLabels))
		case 2:
			return wire.Check(b, f.Off, f.N, peerFields, peer(&n.destLabels))
		case 4:
			return wire.Check(b, f.Off, f.N, requestFields, request)
		case 10: // context_extensions
			n.extensions++
			return entry(f)
		default: // 11, 13: metadata_context, route_metadata_context
			return wire.Check(b, f.Off, f.N, metadataFields, nil)
		}
	}
	ok := wire.Check(b, 0, len(b), checkFields, func(f wire.Field) bool {
		return wire.Check(b, f.Off, f.N, attributesFields, attributes)
	})
	return n, ok
}

// decodeCheck reads b into req as proto.Unmarshal would (repeated
// messages merged, the last of a repeated scalar or map key kept), or
// returns false, leaving req as it was.
func decodeCheck(b []byte, req *authv3.CheckRequest) bool {
	n, ok := checkCheck(b)
	if !ok {
		return false
	}
	proto.Reset(req) // as proto.Unmarshal does
	s := string(b)   // every string is a piece of this one copy
	str := func(f wire.Field) string { return s[f.Off : f.Off+f.N] }
	entry := func(f wire.Field, m map[string]string) {
		var k, v string
		wire.Each(b, f.Off, f.N, func(g wire.Field) {
			if g.Num == 1 {
				k = str(g)
			} else {
				v = str(g)
			}
		})
		m[k] = v
	}
	peer := func(p **authv3.AttributeContext_Peer, f wire.Field, labels int) {
		if *p == nil {
			*p = &authv3.AttributeContext_Peer{}
		}
		pr := *p
		wire.Each(b, f.Off, f.N, func(g wire.Field) {
			switch g.Num {
			case 1:
				if pr.Address == nil {
					pr.Address = &corev3.Address{}
				}
				sa, _ := pr.Address.Address.(*corev3.Address_SocketAddress)
				if sa == nil {
					sa = &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{}}
					pr.Address.Address = sa
				}
				wire.Each(b, g.Off, g.N, func(h wire.Field) { // Address: socket_address
					sock := sa.SocketAddress
					wire.Each(b, h.Off, h.N, func(k wire.Field) {
						switch k.Num {
						case 1:
							sock.Protocol = corev3.SocketAddress_Protocol(int32(k.V))
						case 2:
							sock.Address = str(k)
						case 3:
							sock.PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: uint32(k.V)}
						case 5:
							sock.ResolverName = str(k)
						case 6:
							sock.Ipv4Compat = k.V != 0
						case 7:
							sock.NetworkNamespaceFilepath = str(k)
						}
					})
				})
			case 2:
				pr.Service = str(g)
			case 3:
				if pr.Labels == nil {
					pr.Labels = make(map[string]string, labels)
				}
				entry(g, pr.Labels)
			case 4:
				pr.Principal = str(g)
			case 5:
				pr.Certificate = str(g)
			}
		})
	}
	wire.Each(b, 0, len(b), func(f wire.Field) { // CheckRequest: attributes
		if req.Attributes == nil {
			req.Attributes = &authv3.AttributeContext{}
		}
		a := req.Attributes
		wire.Each(b, f.Off, f.N, func(g wire.Field) {
			switch g.Num {
			case 1:
				peer(&a.Source, g, n.sourceLabels)
			case 2:
				peer(&a.Destination, g, n.destLabels)
			case 11:
				if a.MetadataContext == nil {
					a.MetadataContext = &corev3.Metadata{}
				}
			case 13:
				if a.RouteMetadataContext == nil {
					a.RouteMetadataContext = &corev3.Metadata{}
				}
			case 10:
				if a.ContextExtensions == nil {
					a.ContextExtensions = make(map[string]string, n.extensions)
				}
				entry(g, a.ContextExtensions)
			case 4:
				if a.Request == nil {
					a.Request = &authv3.AttributeContext_Request{}
				}
				r := a.Request
				wire.Each(b, g.Off, g.N, func(h wire.Field) {
					if h.Num == 1 {
						if r.Time == nil {
							r.Time = &timestamppb.Timestamp{}
						}
						wire.Each(b, h.Off, h.N, func(k wire.Field) {
							if k.Num == 1 {
								r.Time.Seconds = int64(k.V)
							} else {
								r.Time.Nanos = int32(k.V)
							}
						})
						return
					}
					if r.Http == nil {
						r.Http = &authv3.AttributeContext_HttpRequest{}
					}
					decodeHTTP(b, h, r.Http, n.headers, str, entry)
				})
			}
		})
	})
	return true
}

// decodeHTTP reads the HttpRequest in field f of b into h.
func decodeHTTP(b []byte, f wire.Field, h *authv3.AttributeContext_HttpRequest, headers int,
	str func(wire.Field) string, entry func(wire.Field, map[string]string)) {
	wire.Each(b, f.Off, f.N, func(g wire.Field) {
		switch g.Num {
		case 1:
			h.Id = str(g)
		case 2:
			h.Method = str(g)
		case 3:
			if h.Headers == nil {
				h.Headers = make(map[string]string, headers)
			}
			entry(g, h.Headers)
		case 4:
			h.Path = str(g)
		case 5:
			h.Host = str(g)
		case 6:
			h.Scheme = str(g)
		case 7:
			h.Query = str(g)
		case 8:
			h.Fragment = str(g)
		case 9:
			h.Size = int64(g.V)
		case 10:
			h.Protocol = str(g)
		case 11:
			h.Body = str(g)
		case 12:
			h.RawBody = append([]byte(nil), g.Bytes(b)...)
		}
	})
}
