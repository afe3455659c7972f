//go:build vtprotobuf

package rls

import "testing"

// BenchmarkEncodeResponseVT is BenchmarkEncodeResponse by go-control-plane's
// MarshalVTStrict, which exists only with -tags vtprotobuf.
func BenchmarkEncodeResponseVT(b *testing.B) {
	x := answer()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := x.MarshalVTStrict(); err != nil {
			b.Fatal(err)
		}
	}
}
