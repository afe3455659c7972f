package limiter

import (
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// A Redis that accepts connections and never answers holds each queued
// give-back for replyWait; Close gives the queue closeDrain and then drops
// the rest after the one in flight, so a shutdown (SIGTERM, a Kubernetes
// grace period) is not held up by the queue: 50 give-backs of a 1 s wait
// would take 50 s.
func TestCloseDoesNotWaitOutEveryQueuedGiveBack(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			defer c.Close() // read nothing, answer nothing
		}
	}()
	// As levy serve's limiter client: reads bounded by the context.
	client := redis.NewClient(&redis.Options{Addr: lis.Addr().String(), ReadTimeout: time.Second, ContextTimeoutEnabled: true, MaxRetries: -1})
	defer client.Close()
	was := closeDrain
	closeDrain = 200 * time.Millisecond
	defer func() { closeDrain = was }()
	r := NewRedis(RedisConfig{Client: client, Timeout: time.Second, ReplyWait: time.Second})
	limit := Limit{Kind: Quota, Name: "q", Key: "{c:a}:q", Cost: 1, Max: 10, Unit: "month"}
	for range 50 {
		r.refunds <- []Limit{limit}
	}
	start := time.Now()
	done := make(chan struct{})
	go func() { r.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Close still waiting after a minute")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Close took %v with a stalled Redis, want about closeDrain (%v) plus one give-back's wait at most", took, closeDrain)
	}
}
