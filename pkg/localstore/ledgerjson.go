package localstore

import (
	"encoding/json"
	"strconv"

	"github.com/levyhq/levy/pkg/limiter"
)

// appendLedgerJSON appends e as json.Marshal writes it, byte for byte (the
// file's format is unchanged, and its readers are encoding/json's). Every
// write-behind commit writes the ledger window of each consumer that had
// traffic since the last, and json.Marshal's reflection was 17% of such a
// commit's CPU. BenchmarkCommitBusy (150 consumers' counters and windows,
// go test -run '^$' -bench CommitBusy -benchtime 2s -count 3
// ./pkg/localstore/, a loaded 2-core VM): 853-916 cpu-us a commit with
// json.Marshal, 560-693 with this and one buffer for the commit's values.
// TestLedgerJSONKnowsEveryField fails when LedgerEntry gains a field this
// does not write; FuzzLedgerJSON compares the two.
func appendLedgerJSON(dst []byte, e limiter.LedgerEntry) ([]byte, error) {
	if e.Rejected != "" { // a rare entry, and a string to escape: encoding/json's
		v, err := json.Marshal(e)
		return append(dst, v...), err
	}
	dst = append(dst, `{"Units":`...)
	dst = strconv.AppendInt(dst, e.Units, 10)
	dst = append(dst, `,"Size":`...)
	dst = strconv.AppendInt(dst, int64(e.Size), 10)
	dst = append(dst, `,"Exported":`...)
	dst = strconv.AppendBool(dst, e.Exported)
	for _, f := range [...]struct {
		name string
		v    int64
	}{
		{`,"Refunded":`, e.Refunded},
		{`,"Reported":`, e.Reported},
		{`,"Accounted":`, e.Accounted},
		{`,"Billed":`, e.Billed},
		{`,"Events":`, int64(e.Events)},
		{`,"LastValue":`, e.LastValue},
		{`,"LastSent":`, e.LastSent},
		{`,"Pending":`, e.Pending},
	} {
		if f.v != 0 { // omitempty
			dst = append(dst, f.name...)
			dst = strconv.AppendInt(dst, f.v, 10)
		}
	}
	return append(dst, '}'), nil
}
