package bench

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// The load generator stands in for Envoy, which decodes CheckResponses in
// C++: charging a Go client's full protobuf decoding to the server under
// test would measure the harness, not the server. So callers read a
// response the way a cheap proxy would: as wire bytes, checking only
// status.code (field 1.1) and that an ok_response (field 3) is present.
// Both servers are read the same way; TestBenchHarnessAllows still decodes
// fully and checks the headers levy sends. RateLimitResponses are read the
// same way, for overall_code (field 1) only; TestRateLimitHarnessAllows
// decodes levy's statuses.

// wireResponse holds a response as it came off the wire.
type wireResponse struct{ b []byte }

// wireCodec marshals requests as protobuf and keeps responses as bytes.
type wireCodec struct{}

var _ encoding.CodecV2 = wireCodec{}

func (wireCodec) Name() string { return "proto" }

func (wireCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("marshal %T", v)
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (wireCodec) Unmarshal(data mem.BufferSlice, v any) error {
	w, ok := v.(*wireResponse)
	if !ok {
		return fmt.Errorf("unmarshal into %T", v)
	}
	w.b = data.Materialize()
	return nil
}

// allowed reports whether the response is an allow: status.code 0 and an
// ok_response.
func (w *wireResponse) allowed() error {
	b := w.b
	var code uint64
	ok := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errors.New("bad response tag")
		}
		b = b[n:]
		if typ != protowire.BytesType {
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return errors.New("bad response field")
			}
			b = b[m:]
			continue
		}
		v, m := protowire.ConsumeBytes(b)
		if m < 0 {
			return errors.New("bad response bytes")
		}
		b = b[m:]
		switch num {
		case 1: // status
			for len(v) > 0 {
				sn, st, k := protowire.ConsumeTag(v)
				if k < 0 {
					return errors.New("bad status")
				}
				v = v[k:]
				if sn == 1 && st == protowire.VarintType {
					c, k := protowire.ConsumeVarint(v)
					if k < 0 {
						return errors.New("bad status code")
					}
					code, v = c, v[k:]
					continue
				}
				k = protowire.ConsumeFieldValue(sn, st, v)
				if k < 0 {
					return errors.New("bad status field")
				}
				v = v[k:]
			}
		case 3: // ok_response
			ok = true
		}
	}
	if code != 0 || !ok {
		return fmt.Errorf("status code %d, ok_response %v: want an allow", code, ok)
	}
	return nil
}

// rateLimitOK reports whether a RateLimitResponse's overall_code (field 1,
// a varint) is OK (1). It reads the top-level fields without decoding the
// statuses or headers; as in protobuf, the last overall_code wins.
func (w *wireResponse) rateLimitOK() error {
	const ok = 1 // envoy.service.ratelimit.v3.RateLimitResponse.Code OK
	b := w.b
	var code uint64 // an absent overall_code is UNKNOWN (0)
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errors.New("bad response tag")
		}
		b = b[n:]
		if num == 1 && typ == protowire.VarintType {
			c, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return errors.New("bad overall_code")
			}
			code, b = c, b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return errors.New("bad response field")
		}
		b = b[m:]
	}
	if code != ok {
		return fmt.Errorf("overall_code %d, want 1 (OK)", code)
	}
	return nil
}
