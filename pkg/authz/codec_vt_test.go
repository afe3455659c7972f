//go:build vtprotobuf

package authz

import "testing"

// BenchmarkEncodeAllowVT is BenchmarkEncodeAllow by go-control-plane's
// MarshalVTStrict, which exists only with -tags vtprotobuf.
func BenchmarkEncodeAllowVT(b *testing.B) {
	for _, bb := range allowResponses() {
		b.Run("MarshalVTStrict/"+bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bb.x.MarshalVTStrict(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
