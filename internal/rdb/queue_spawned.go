package rdb

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// What a task's dependencies spawned (dynamic tasks): the spawn records
// the finish script writes (statehash.SpawnField), followed from a task's
// dependencies to the tasks they spawned, and what those spawned in turn.

// spawnedScript returns the closure of the spawn records of ids: the
// sinks each of them spawned, then what those spawned, breadth first, each
// id once. Read-only; a record is our comma-separated list of ids.
//
// KEYS: 1 state
// ARGV: the task ids to start from
// Reply: the ids, in the order found
var spawnedScript = redis.NewScript(`
local seen, out, frontier = {}, {}, ARGV
while #frontier > 0 do
  local nextf = {}
  for i = 1, #frontier, 500 do
    local fields = {}
    for j = i, math.min(i + 499, #frontier) do fields[#fields + 1] = '@s:' .. frontier[j] end
    local recs = redis.call('HMGET', KEYS[1], unpack(fields))
    for j = 1, #fields do
      if recs[j] then
        for id in string.gmatch(recs[j], '[^,]+') do
          if not seen[id] then
            seen[id] = true
            out[#out + 1] = id
            nextf[#nextf + 1] = id
          end
        end
      end
    end
  end
  frontier = nextf
end
return out
`)

// ReadSpawned returns what the tasks deps of run spawned, transitively
// (see spawnedScript): for a task whose dependencies are deps, once it is
// dispatched, exactly the spawned tasks it waited for (projector.Task's
// Waits), breadth first.
func (d DB) ReadSpawned(ctx context.Context, run string, deps []string) ([]string, error) {
	if len(deps) == 0 {
		return nil, nil
	}
	args := make([]any, len(deps))
	for i, dep := range deps {
		args[i] = dep
	}
	ids, err := spawnedScript.Run(ctx, d.C, []string{d.K.RunState(run)}, args...).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("read what the dependencies of a task of run %s spawned: %w", run, err)
	}
	return ids, nil
}
