package rls

import (
	"strings"

	rlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/types/known/structpb"
)

// responseMetadata is the response's dynamic_metadata, in
// envoyproxy/ratelimit's shape (its ratelimitToMetadata), which Envoy
// stores under envoy.filters.http.ratelimit for routing, headers and logs:
//
//	domain:      the request's domain
//	descriptors: one {entries: ["key=value", ...], limit?, hitsAddend?} per
//	             request descriptor, in order
//	hitsAddend:  the request's hits_addend, when not 0
//	metadata:    the metadata of the rules of the descriptors that passed
//	             (decided and OK), merged in request order, when any
//
// todo are the decided descriptors and sts every descriptor's status;
// none passed when todo is nil.
func responseMetadata(req *rlsv3.RateLimitRequest, todo []limited, sts []rlsv3.RateLimitResponse_DescriptorStatus) *structpb.Struct {
	fields := make(map[string]*structpb.Value, 4)
	fields["domain"] = structpb.NewStringValue(req.GetDomain())
	descs := make([]*structpb.Value, 0, len(req.GetDescriptors()))
	for _, d := range req.GetDescriptors() {
		descs = append(descs, structpb.NewStructValue(descriptorStruct(d)))
	}
	fields["descriptors"] = structpb.NewListValue(&structpb.ListValue{Values: descs})
	if h := req.GetHitsAddend(); h != 0 {
		fields["hitsAddend"] = structpb.NewNumberValue(float64(h))
	}
	passed := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	for _, l := range todo {
		if l.rule != nil && l.rule.Metadata != nil && sts[l.desc].Code == rlsv3.RateLimitResponse_OK {
			mergeMetadata(passed, l.rule.Metadata)
		}
	}
	if len(passed.Fields) > 0 {
		fields["metadata"] = structpb.NewStructValue(passed)
	}
	return &structpb.Struct{Fields: fields}
}

func descriptorStruct(d *rlv3.RateLimitDescriptor) *structpb.Struct {
	fields := make(map[string]*structpb.Value, 3)
	entries := make([]*structpb.Value, 0, len(d.GetEntries()))
	for _, e := range d.GetEntries() {
		entries = append(entries, structpb.NewStringValue(e.GetKey()+"="+e.GetValue()))
	}
	fields["entries"] = structpb.NewListValue(&structpb.ListValue{Values: entries})
	if o := d.GetLimit(); o != nil {
		fields["limit"] = structpb.NewStringValue(overrideText(o))
	}
	if h := d.GetHitsAddend(); h != nil {
		fields["hitsAddend"] = structpb.NewNumberValue(float64(h.GetValue()))
	}
	return &structpb.Struct{Fields: fields}
}

// overrideText is a limit override in protobuf's text format on one line,
// as envoyproxy/ratelimit writes it ("requests_per_unit:10 unit:MINUTE"),
// with single spaces: protobuf's own String randomly doubles some, so as
// not to be relied on.
func overrideText(o *rlv3.RateLimitDescriptor_RateLimitOverride) string {
	b, err := prototext.MarshalOptions{}.Marshal(o)
	if err != nil {
		return ""
	}
	return strings.Join(strings.Fields(string(b)), " ")
}

// mergeMetadata merges src into dst as envoyproxy/ratelimit does: a key
// dst lacks is added; where both have a struct, the structs are merged;
// otherwise the value already in dst stays (the first descriptor wins).
// src, a rule's, is never modified: its structs are copied into dst, which
// later merges write into (upstream shares them, and its rules' metadata
// collects other rules' keys); other values, never written, are shared.
func mergeMetadata(dst, src *structpb.Struct) {
	for k, v := range src.GetFields() {
		cur, ok := dst.Fields[k]
		if !ok {
			dst.Fields[k] = copyStructs(v)
			continue
		}
		if cs, vs := cur.GetStructValue(), v.GetStructValue(); cs != nil && vs != nil {
			mergeMetadata(cs, vs)
		}
	}
}

// copyStructs copies v's structs, nested in structs, and shares the rest.
func copyStructs(v *structpb.Value) *structpb.Value {
	s := v.GetStructValue()
	if s == nil {
		return v
	}
	c := &structpb.Struct{Fields: make(map[string]*structpb.Value, len(s.Fields))}
	for k, f := range s.Fields {
		c.Fields[k] = copyStructs(f)
	}
	return structpb.NewStructValue(c)
}
