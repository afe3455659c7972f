// Package localstore is levy's embedded store: one bbolt file under the data
// directory that keeps quota counters and demo keys across restarts, so a
// single levy process needs no Redis.
package localstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/levyhq/levy/pkg/keyspace"
	"github.com/levyhq/levy/pkg/limiter"
)

var (
	bucketLedger   = []byte("ledger")
	bucketCounters = []byte("counters")
	bucketMeta     = []byte("meta")
	keyDemo        = []byte("demo-keys")
)

// DB is the embedded store.
type DB struct {
	bolt *bolt.DB
	path string
}

var (
	_ limiter.CounterStore  = (*DB)(nil)
	_ limiter.Committer     = (*DB)(nil)
	_ limiter.CounterReader = (*DB)(nil)
)

// Open opens (creating if needed) levy.db under dir. A file that exists
// but is empty or corrupt is an error that says so: levy never starts on
// it as if it were new, which would reset every quota and lose the
// unexported usage.
func Open(dir string) (*DB, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	path := filepath.Join(dir, "levy.db")
	if st, err := os.Stat(path); err == nil && st.Size() == 0 {
		return nil, fmt.Errorf("open %s: the file is empty (0 bytes), so its quota counters and usage ledger are gone: "+
			"restore it from a backup, or remove it to start with none", path)
	}
	if _, err := os.Stat(path); err == nil {
		if err := checkCounters(path); err != nil {
			return nil, fmt.Errorf("open %s: %w", path, err)
		}
	}
	var b *bolt.DB
	err := safely(func() error {
		var err error
		// No InitialMmapSize: it would spare a read the wait while the
		// writer maps a grown file anew (a dozen times in a file's life,
		// as the mapping doubles), but bbolt then grows the file 16 MB at
		// a time from the first write.
		b, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
		return lockErr(err)
	})
	if err != nil {
		if b != nil {
			b.Close()
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	err = safely(func() error {
		return b.Update(func(tx *bolt.Tx) error {
			for _, name := range [][]byte{bucketCounters, bucketMeta, bucketLedger} {
				if _, err := tx.CreateBucketIfNotExists(name); err != nil {
					return err
				}
			}
			return upgradeLayout(tx)
		})
	})
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("init %s: %w", path, err)
	}
	return &DB{bolt: b, path: path}, nil
}

// upgradeLayout folds the counters and ledger windows named in the layout
// before keyspace.Version into their current names, in the transaction
// that opens the file (so a crash leaves it as it was). It runs at every
// open, not once: an older levy, rolled back to, writes the old names
// again, and what it wrote must be counted and exported after the roll
// forward. It costs a seek when there is nothing to fold: old names start
// with '{' and current ones with "levy:", so a cursor at "{" finds only old
// ones, and long keys (stored under their hash) are the few that are
// read to tell. A name under both is merged as the Redis sweep merges
// (pkg/redisstore/layout.lua): a counter of the same period sums, a
// window sums its units and what was billed.
func upgradeLayout(tx *bolt.Tx) error {
	for _, name := range [][]byte{bucketCounters, bucketLedger} {
		b := tx.Bucket(name)
		type move struct {
			from []byte
			to   string
			v    []byte
		}
		var moves []move
		c := b.Cursor()
		visit := func(prefix []byte) error {
			for sk, sv := c.Seek(prefix); sk != nil && bytes.HasPrefix(sk, prefix); sk, sv = c.Next() {
				k, v, err := entry(sk, sv)
				if err != nil {
					return err
				}
				if to, ok := keyspace.UpgradeStored(k); ok {
					moves = append(moves, move{slices.Clone(sk), to, slices.Clone(v)})
				}
			}
			return nil
		}
		for _, prefix := range []string{"{", longKeyPrefix} {
			if err := visit([]byte(prefix)); err != nil {
				return fmt.Errorf("move %s to layout %d: %w", name, keyspace.Version, err)
			}
		}
		for _, m := range moves {
			v := m.v
			if sk := storedKey(m.to); b.Get(sk) != nil {
				_, cur, err := entry(sk, b.Get(sk))
				if err != nil {
					return err
				}
				if v, err = mergeStored(name, m.to, v, cur); err != nil {
					return err
				}
			}
			if err := b.Delete(m.from); err != nil {
				return err
			}
			if err := put(b, m.to, v); err != nil {
				return err
			}
		}
	}
	return nil
}

// mergeStored merges the value old of a counter or ledger window (bucket
// name) under an old name into the value cur under its current name, key.
func mergeStored(name []byte, key string, old, cur []byte) ([]byte, error) {
	if bytes.Equal(name, bucketCounters) {
		o, err := decodeCounter(key, old)
		if err != nil {
			return nil, err
		}
		n, err := decodeCounter(key, cur)
		if err != nil {
			return nil, err
		}
		// One name per period start: the same period, summed.
		var v [16]byte
		binary.BigEndian.PutUint64(v[:8], uint64(o.Value+n.Value))
		binary.BigEndian.PutUint64(v[8:], uint64(max(o.End.UnixNano(), n.End.UnixNano())))
		return v[:], nil
	}
	var o, n limiter.LedgerEntry
	if err := json.Unmarshal(old, &o); err != nil {
		return nil, fmt.Errorf("ledger window %q: %w", key, err)
	}
	if err := json.Unmarshal(cur, &n); err != nil {
		return nil, fmt.Errorf("ledger window %q: %w", key, err)
	}
	return json.Marshal(mergeWindows(o, n))
}

// mergeWindows is one window of the two copies o (old name) and n:
// units, refunds, reports, billed value and events summed; exported when
// either was, and accounted what both had accounted, so that what Stripe
// has not got is due, once; the size, pending value and rejection of the
// one that has them (n first), and the last event of the later.
func mergeWindows(o, n limiter.LedgerEntry) limiter.LedgerEntry {
	m := n
	m.Units, m.Refunded, m.Reported = o.Units+n.Units, o.Refunded+n.Refunded, o.Reported+n.Reported
	m.Billed, m.Events = o.Billed+n.Billed, o.Events+n.Events
	m.Exported = o.Exported || n.Exported
	m.Accounted = accounted(o) + accounted(n)
	if m.Size == 0 {
		m.Size = o.Size
	}
	if m.Pending == 0 {
		m.Pending = o.Pending
	}
	if m.Rejected == "" {
		m.Rejected = o.Rejected
	}
	if o.LastSent > n.LastSent {
		m.LastValue, m.LastSent = o.LastValue, o.LastSent
	}
	return m
}

// accounted is what Stripe has of window e: nothing unless exported, and
// its units when exported before levy kept Accounted.
func accounted(e limiter.LedgerEntry) int64 {
	switch {
	case !e.Exported:
		return 0
	case e.Accounted == 0 && e.Events == 0 && e.Billed == 0:
		return e.Units
	}
	return e.Accounted
}

// lockErr explains a timeout on the file lock: a second levy on the same
// data dir would wait forever for it, so it fails fast saying why.
func lockErr(err error) error {
	if errors.Is(err, bolt.ErrTimeout) {
		return fmt.Errorf("another levy process holds it (one process per --data-dir)")
	}
	return err
}

// checkCounters reads every quota counter of the file once, in a read-only
// handle that it closes: the local limiter reads counters only when it
// needs them, and a corrupt page must still stop levy at start, not deny
// or allow calls later. Closing the handle unmaps the file, so its pages
// do not stay in the process's RSS (a million counters: ~150 MB).
func checkCounters(path string) error {
	return safely(func() error {
		b, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second, ReadOnly: true})
		if err != nil {
			return lockErr(err)
		}
		defer b.Close()
		return b.View(func(tx *bolt.Tx) error {
			bucket := tx.Bucket(bucketCounters)
			if bucket == nil {
				return nil
			}
			return bucket.ForEach(func(sk, sv []byte) error {
				_, err := counterValue(sk, sv)
				return err
			})
		})
	})
}

// errCorrupt says what to do about a corrupt file.
var errCorrupt = errors.New("the file is corrupt: restore it from a backup, or move it away to start with no quota counters and no usage ledger")

// safely runs fn, turning a panic of bbolt's on a corrupt file into an
// error, and so a memory fault on its mapping of the file (a page number
// past the end of a truncated file), which would otherwise end the
// process.
func safely(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w (%v)", errCorrupt, r)
		}
	}()
	return fn()
}

// Close closes the file.
func (db *DB) Close() error { return db.bolt.Close() }

// LoadCounters implements limiter.CounterStore.
func (db *DB) LoadCounters() (map[string]limiter.Counter, error) {
	out := map[string]limiter.Counter{}
	if err := safely(func() error { return db.loadCounters(out) }); err != nil {
		return nil, fmt.Errorf("%s: %w", db.path, err)
	}
	return out, nil
}

func (db *DB) loadCounters(out map[string]limiter.Counter) error {
	return db.bolt.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCounters).ForEach(func(sk, sv []byte) error {
			k, v, err := entry(sk, sv)
			if err != nil {
				return err
			}
			c, err := decodeCounter(k, v)
			out[k] = c
			return err
		})
	})
}

func decodeCounter(k string, v []byte) (limiter.Counter, error) {
	if len(v) != 16 {
		return limiter.Counter{}, fmt.Errorf("counter %q: corrupt value", k)
	}
	return limiter.Counter{
		Value: int64(binary.BigEndian.Uint64(v[:8])),
		End:   time.Unix(0, int64(binary.BigEndian.Uint64(v[8:]))).UTC(),
	}, nil
}

// ReadCounter implements limiter.CounterReader: one read transaction.
func (db *DB) ReadCounter(key string) (c limiter.Counter, found bool, err error) {
	err = safely(func() error {
		return db.bolt.View(func(tx *bolt.Tx) error {
			sk := storedKey(key)
			sv := tx.Bucket(bucketCounters).Get(sk)
			if sv == nil {
				return nil
			}
			k, v, err := entry(sk, sv)
			if err != nil {
				return err
			}
			if k != key {
				return fmt.Errorf("counter %q: stored under the hash of %q", key, k)
			}
			found = true
			c, err = decodeCounter(k, v)
			return err
		})
	})
	if err != nil {
		return limiter.Counter{}, false, fmt.Errorf("%s: %w", db.path, err)
	}
	return c, found, nil
}

// DeleteEndedCounters implements limiter.CounterReader: it looks at up to
// max counters in a read transaction and deletes the ended ones in one
// write transaction, so a pass over a million counters is a hundred short
// steps that neither hold the writer for long nor build one huge
// transaction.
func (db *DB) DeleteEndedCounters(before time.Time, from string, max int) (string, error) {
	var ended [][]byte
	next := ""
	err := safely(func() error {
		if err := db.bolt.View(func(tx *bolt.Tx) error {
			cur := tx.Bucket(bucketCounters).Cursor()
			sk, sv := cur.Seek([]byte(from))
			for seen := 0; sk != nil; sk, sv = cur.Next() {
				if seen == max {
					next = string(sk)
					return nil
				}
				seen++
				v, err := counterValue(sk, sv)
				if err != nil {
					return err
				}
				if end := int64(binary.BigEndian.Uint64(v[8:])); end < before.UnixNano() {
					ended = append(ended, bytes.Clone(sk))
				}
			}
			return nil
		}); err != nil || len(ended) == 0 {
			return err
		}
		return db.bolt.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketCounters)
			for _, sk := range ended {
				if err := b.Delete(sk); err != nil {
					return err
				}
			}
			return nil
		})
	})
	if err != nil {
		return from, fmt.Errorf("%s: %w", db.path, err)
	}
	return next, nil
}

// SaveCounters implements limiter.CounterStore: one transaction, fsynced.
func (db *DB) SaveCounters(set map[string]limiter.Counter, del []string) error {
	return safely(func() error {
		return db.bolt.Update(func(tx *bolt.Tx) error { return putCounters(tx, set, del) })
	})
}

// Commit implements limiter.Committer: counters and ledger windows in one
// transaction, fsynced once.
func (db *DB) Commit(c limiter.Changes) error {
	return safely(func() error {
		return db.bolt.Update(func(tx *bolt.Tx) error {
			if err := putCounters(tx, c.Counters, c.DeleteCounters); err != nil {
				return err
			}
			return putLedger(tx, c.Ledger, c.DeleteLedger)
		})
	})
}

func putCounters(tx *bolt.Tx, set map[string]limiter.Counter, del []string) error {
	b := tx.Bucket(bucketCounters)
	for _, k := range sortedKeys(set) {
		c := set[k]
		var v [16]byte
		binary.BigEndian.PutUint64(v[:8], uint64(c.Value))
		binary.BigEndian.PutUint64(v[8:], uint64(c.End.UnixNano()))
		if err := put(b, k, v[:]); err != nil {
			return err
		}
	}
	return deleteAll(b, del)
}

// sortedKeys returns m's keys in order. bbolt puts a key into its page's
// node by moving the keys after it: in map order, a commit of many new keys
// into a small tree moves them over and over (a quadratic copy that was
// 80% of a 100k-key commit's CPU), in order each goes at the end.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// maxStoredKey is the longest key stored as it is. A longer one (a
// descriptor value from a request header can be any length; bbolt refuses
// keys over 32 KiB) is stored under its hash, its value prefixed with the
// key, so that no key can fail a save and hold up the others.
const maxStoredKey = 1024

// longKeyPrefix starts the stored name of a long key; no key levy writes
// starts with a NUL.
const longKeyPrefix = "\x00h:"

func storedKey(k string) []byte {
	if len(k) <= maxStoredKey {
		return []byte(k)
	}
	sum := sha256.Sum256([]byte(k))
	return []byte(longKeyPrefix + hex.EncodeToString(sum[:]))
}

func put(b *bolt.Bucket, k string, v []byte) error {
	sk := storedKey(k)
	if len(sk) != len(k) {
		v = append(binary.AppendUvarint(nil, uint64(len(k))), append([]byte(k), v...)...)
	}
	return b.Put(sk, v)
}

func deleteAll(b *bolt.Bucket, keys []string) error {
	for _, k := range keys {
		if err := b.Delete(storedKey(k)); err != nil {
			return err
		}
	}
	return nil
}

// counterValue is a stored counter's 16 bytes (value, end), read through
// a long key's entry; an error names a corrupt one.
func counterValue(sk, sv []byte) ([]byte, error) {
	v := sv
	if bytes.HasPrefix(sk, []byte(longKeyPrefix)) {
		var err error
		if _, v, err = entry(sk, sv); err != nil {
			return nil, err
		}
	}
	if len(v) != 16 {
		return nil, fmt.Errorf("counter %q: corrupt value", sk)
	}
	return v, nil
}

// entry reads a stored key and value back: the key and the value as put.
func entry(sk, v []byte) (string, []byte, error) {
	if !bytes.HasPrefix(sk, []byte(longKeyPrefix)) {
		return string(sk), v, nil
	}
	n, m := binary.Uvarint(v)
	if m <= 0 || n > uint64(len(v)-m) {
		return "", nil, fmt.Errorf("long key %q: corrupt value", sk)
	}
	return string(v[m : m+int(n)]), v[m+int(n):], nil
}

// LoadLedger implements limiter.CounterStore.
func (db *DB) LoadLedger() (map[string]limiter.LedgerEntry, error) {
	out := map[string]limiter.LedgerEntry{}
	if err := safely(func() error { return db.loadLedger(out) }); err != nil {
		return nil, fmt.Errorf("%s: %w", db.path, err)
	}
	return out, nil
}

func (db *DB) loadLedger(out map[string]limiter.LedgerEntry) error {
	return db.bolt.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketLedger).ForEach(func(sk, sv []byte) error {
			k, v, err := entry(sk, sv)
			if err != nil {
				return err
			}
			var e limiter.LedgerEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("ledger window %q: %w", k, err)
			}
			out[k] = e
			return nil
		})
	})
}

// SaveLedger implements limiter.CounterStore: one transaction, fsynced.
func (db *DB) SaveLedger(set map[string]limiter.LedgerEntry, del []string) error {
	return safely(func() error {
		return db.bolt.Update(func(tx *bolt.Tx) error { return putLedger(tx, set, del) })
	})
}

func putLedger(tx *bolt.Tx, set map[string]limiter.LedgerEntry, del []string) error {
	b := tx.Bucket(bucketLedger)
	// One buffer for the commit's values (an entry is about 50 bytes):
	// bbolt keeps each value until the commit, and a full buffer is left
	// to them, not reused.
	buf := make([]byte, 0, 64*len(set))
	for _, k := range sortedKeys(set) {
		start := len(buf)
		var err error
		if buf, err = appendLedgerJSON(buf, set[k]); err != nil {
			return err
		}
		if err := put(b, k, buf[start:len(buf):len(buf)]); err != nil {
			return err
		}
	}
	return deleteAll(b, del)
}

// DemoKeys returns each plan's demo key (a dev-only plaintext key, kept so
// that `make run` prints the same keys after a restart), creating missing
// ones with gen.
func (db *DB) DemoKeys(plans []string, gen func() (string, error)) (map[string]string, error) {
	out := map[string]string{}
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if v := b.Get(keyDemo); v != nil {
			if err := json.Unmarshal(v, &out); err != nil {
				return fmt.Errorf("read demo keys: %w", err)
			}
		}
		changed := false
		for _, p := range plans {
			if _, ok := out[p]; ok {
				continue
			}
			k, err := gen()
			if err != nil {
				return err
			}
			out[p], changed = k, true
		}
		if !changed {
			return nil
		}
		v, err := json.Marshal(out)
		if err != nil {
			return err
		}
		return b.Put(keyDemo, v)
	})
	return out, err
}

var bucketEvents = []byte("stripe-events")

// Claim records an event id; true the first time within ttl (billing.Events).
func (db *DB) Claim(_ context.Context, id string, ttl time.Duration) (bool, error) {
	first := false
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketEvents)
		if err != nil {
			return err
		}
		now := time.Now()
		if v := b.Get([]byte(id)); len(v) == 8 && now.Before(time.Unix(0, int64(binary.BigEndian.Uint64(v)))) {
			return nil
		}
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], uint64(now.Add(ttl).UnixNano()))
		first = true
		return b.Put([]byte(id), v[:])
	})
	return first, err
}

// Release forgets a claim (billing.Events).
func (db *DB) Release(_ context.Context, id string) error {
	return db.bolt.Update(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketEvents); b != nil {
			return b.Delete([]byte(id))
		}
		return nil
	})
}
