package redisstore

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// scriptCall is one call of a script: its keys and its arguments.
type scriptCall struct {
	keys []string
	args []any
}

// runScript sends calls of s as EVALSHA in one pipeline, and the calls a
// Redis that had not loaded s refused (NOSCRIPT) again as EVAL, in a
// second: a refused script ran nothing, so nothing runs twice. It returns
// each call's command, in order, for its reply or error.
func runScript(ctx context.Context, c redis.UniversalClient, s *redis.Script, calls []scriptCall) []*redis.Cmd {
	if len(calls) == 0 {
		return nil
	}
	pipe := c.Pipeline()
	cmds := make([]*redis.Cmd, len(calls))
	for i, call := range calls {
		cmds[i] = s.EvalSha(ctx, pipe, call.keys, call.args...)
	}
	_, _ = pipe.Exec(ctx) // each command holds its own error
	var again []int
	for i, cmd := range cmds {
		if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		pipe = c.Pipeline()
		for _, i := range again {
			cmds[i] = s.Eval(ctx, pipe, calls[i].keys, calls[i].args...)
		}
		_, _ = pipe.Exec(ctx)
	}
	return cmds
}
