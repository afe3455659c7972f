package localstore

import (
	"bytes"
	"encoding/json"
	"math"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/limiter"
)

// appendLedgerJSON writes what json.Marshal writes, so that the file's
// readers, and a levy that predates it, read the same entries.
func TestLedgerJSONMatchesEncodingJSON(t *testing.T) {
	for _, e := range []limiter.LedgerEntry{
		{},
		{Units: 1, Size: time.Minute},
		{Units: -3, Size: time.Hour, Exported: true, Refunded: 2, Reported: 5, Accounted: 7, Billed: 9, Events: 2, LastValue: 11, LastSent: 1764547200, Pending: 4},
		{Units: math.MaxInt64, Size: math.MinInt64, Billed: math.MinInt64, Events: math.MaxInt32},
		{Units: 5, Rejected: `meter "api_calls" <gone> & "\u2028"`},
	} {
		checkLedgerJSON(t, e)
	}
}

func checkLedgerJSON(t *testing.T, e limiter.LedgerEntry) {
	t.Helper()
	want, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	got, err := appendLedgerJSON([]byte("prefix"), e)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, append([]byte("prefix"), want...)) {
		t.Fatalf("%+v:\n got %s\nwant prefix%s", e, got, want)
	}
}

// A field added to LedgerEntry must be written by appendLedgerJSON too, or
// every commit would drop it.
func TestLedgerJSONKnowsEveryField(t *testing.T) {
	var fields []string
	for f := range reflect.TypeFor[limiter.LedgerEntry]().Fields() {
		fields = append(fields, f.Name)
	}
	if !slices.Equal(fields, ledgerJSONFields) {
		t.Fatalf("LedgerEntry's fields are %v, appendLedgerJSON writes %v: teach it the new ones", fields, ledgerJSONFields)
	}
}

func FuzzLedgerJSON(f *testing.F) {
	f.Add(int64(1), int64(time.Minute), true, int64(0), int64(0), int64(0), int64(0), 0, int64(0), int64(0), int64(0), "")
	f.Add(int64(-1), int64(0), false, int64(1), int64(2), int64(3), int64(4), 5, int64(6), int64(7), int64(8), "x<\"y")
	f.Fuzz(func(t *testing.T, units, size int64, exported bool, refunded, reported, accounted, billed int64, events int, last, sent, pending int64, rejected string) {
		checkLedgerJSON(t, limiter.LedgerEntry{Units: units, Size: time.Duration(size), Exported: exported, Refunded: refunded,
			Reported: reported, Accounted: accounted, Billed: billed, Events: events, LastValue: last, LastSent: sent,
			Pending: pending, Rejected: rejected})
	})
}

// ledgerJSONFields is LedgerEntry's fields in the order appendLedgerJSON
// writes them.
var ledgerJSONFields = []string{"Units", "Size", "Exported", "Refunded", "Reported", "Accounted", "Billed", "Events", "LastValue", "LastSent", "Pending", "Rejected"}
