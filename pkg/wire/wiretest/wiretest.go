// Package wiretest builds protobuf wire bytes by hand for the tests of
// levy's message readers: what Envoy would never send but protobuf allows.
package wiretest

import (
	"bytes"
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Marshal is m on the wire.
func Marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Bytes is a length-delimited field.
func Bytes(num protowire.Number, v []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), v)
}

// Varint is a varint field.
func Varint(num protowire.Number, v uint64) []byte {
	return protowire.AppendVarint(protowire.AppendTag(nil, num, protowire.VarintType), v)
}

// Cat is fields one after the other: one message's bytes.
func Cat(fields ...[]byte) []byte { return bytes.Join(fields, nil) }

// KnowsFields fails t when msg's message has other fields than want: a
// reader's tables must be looked at again when go-control-plane adds one.
func KnowsFields(t *testing.T, msg proto.Message, want ...protoreflect.FieldNumber) {
	t.Helper()
	fields := msg.ProtoReflect().Descriptor().Fields()
	var got []protoreflect.FieldNumber
	for i := range fields.Len() {
		got = append(got, fields.Get(i).Number())
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("%s has fields %v, the reader knows %v", msg.ProtoReflect().Descriptor().FullName(), got, want)
	}
}
