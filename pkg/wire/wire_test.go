package wire_test

import (
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/levyhq/levy/pkg/wire"
)

// A hand-written reader or writer that panics costs its message
// protobuf's handling, never the process: the answer is still right.
func TestCodecFallsBackToProtobufWhenItsOwnCodePanics(t *testing.T) {
	c := wire.Codec{
		Decode: func(data mem.BufferSlice, v any) bool {
			v.(*structpb.Struct).Fields = map[string]*structpb.Value{"half": structpb.NewBoolValue(true)}
			panic("a reader bug")
		},
		Encode: func(v any) ([]byte, bool) { panic("a writer bug") },
	}
	want, err := structpb.NewStruct(map[string]any{"plan": "pro", "units": 3.0})
	if err != nil {
		t.Fatal(err)
	}
	before := wire.Recovered.Load()
	data, err := c.Marshal(want)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	got := &structpb.Struct{}
	if err := c.Unmarshal(data, got); err != nil {
		t.Fatalf("Unmarshal: %v", err)
	}
	if !proto.Equal(got, want) {
		t.Fatalf("read %v, want %v (nothing the failed reader wrote may survive)", got, want)
	}
	if n := wire.Recovered.Load() - before; n != 2 {
		t.Fatalf("recovered %d panics, want 2", n)
	}
}
