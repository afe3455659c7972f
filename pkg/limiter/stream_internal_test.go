package limiter

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redistest"
)

// A batch of more numbers than Lua's stack holds goes to decide.lua as
// one MessagePack array rather than a stream of values, and is decided
// all the same.
func TestBatchOfManyNumbersIsSentAsAnArray(t *testing.T) {
	client := redistest.Start(t).Client()
	r := NewRedis(RedisConfig{Client: client, Timeout: 5 * time.Second})
	defer r.Close()
	for _, n := range []int{10, 500} { // 500 distinct quotas: 9 numbers each, past maxStream
		limits := make([]Limit, n)
		for i := range limits {
			limits[i] = Limit{Kind: Quota, Name: "q", Key: fmt.Sprintf("{c:x}:q%d:%d", n, i), Cost: 2, Max: int64(100 + i), Unit: plan.Day}
		}
		args, _ := r.batchArgs(r.decideScript, [][]Limit{limits})
		if array := args[len(args)-1].([]byte)[0] == 0xdd; array != (n == 500) {
			t.Fatalf("%d limits: sent as an array %v", n, array)
		}
		res, _, err := r.runBatch(context.Background(), r.decideScript, [][]Limit{limits})
		if err != nil {
			t.Fatal(err)
		}
		for i, st := range res[0].statuses {
			if !st.OK || st.Used != 2 || st.Remaining != int64(98+i) {
				t.Fatalf("%d limits: limit %d: %+v", n, i, st)
			}
		}
	}
}
