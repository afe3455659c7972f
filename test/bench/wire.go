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
			c, err := lastVarint(v, 1) // google.rpc.Status.code
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			code = c
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
	const ok = 1                    // envoy.service.ratelimit.v3.RateLimitResponse.Code OK
	code, err := lastVarint(w.b, 1) // an absent overall_code is UNKNOWN (0)
	if err != nil {
		return fmt.Errorf("overall_code: %w", err)
	}
	if code != ok {
		return fmt.Errorf("overall_code %d, want 1 (OK)", code)
	}
	return nil
}

// lastVarint is the varint field num of message b (0 when absent; the
// last one when repeated, as in protobuf), skipping the other fields.
func lastVarint(b []byte, num protowire.Number) (uint64, error) {
	var v uint64
	for len(b) > 0 {
		n, typ, k := protowire.ConsumeTag(b)
		if k < 0 {
			return 0, errors.New("bad tag")
		}
		b = b[k:]
		if n == num && typ == protowire.VarintType {
			c, k := protowire.ConsumeVarint(b)
			if k < 0 {
				return 0, errors.New("bad varint")
			}
			v, b = c, b[k:]
			continue
		}
		k = protowire.ConsumeFieldValue(n, typ, b)
		if k < 0 {
			return 0, errors.New("bad field")
		}
		b = b[k:]
	}
	return v, nil
}
