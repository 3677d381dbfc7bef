package rdb

import (
	"context"
	"errors"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// The registries of live processes (workers and projectors). Each has a set
// of ids (<ns>:workers, what operators and tools read), a hash per process
// that expires unless refreshed, and a sorted set scoring each id by when
// its hash expires, so pruning reads only the expired ids (not one EXISTS
// per registered process per process per interval). The three keys live in
// different hash slots: they are written by pipelines, not scripts, and
// every heartbeat rewrites all three, so a lost or half-written entry heals
// at the next beat.

// Registry names one registry's keys.
type Registry struct {
	Set, Expiry string
	Hash        func(id string) string
}

// WorkerRegistry returns the workers' registry.
func (d DB) WorkerRegistry() Registry {
	return Registry{Set: d.K.Workers(), Expiry: d.K.WorkersExpiry(), Hash: d.K.Worker}
}

// ProjectorRegistry returns the projectors' registry.
func (d DB) ProjectorRegistry() Registry {
	return Registry{Set: d.K.Projectors(), Expiry: d.K.ProjectorsExpiry(), Hash: d.K.Projector}
}

// Beat queues on p the whole registry record of process id: every field
// (not only the counters, so a record lost with Redis data comes back
// whole), the hash's TTL, the set membership and the expiry score.
func (r Registry) Beat(ctx context.Context, p redis.Pipeliner, id string, fields map[string]any, now time.Time, ttl time.Duration) {
	key := r.Hash(id)
	p.HSet(ctx, key, fields)
	p.PExpire(ctx, key, ttl)
	p.SAdd(ctx, r.Set, id)
	p.ZAdd(ctx, r.Expiry, redis.Z{Score: float64(now.Add(ttl).UnixMilli()), Member: id})
}

// BeatNow writes a registry record now (see Beat).
func (r Registry) BeatNow(ctx context.Context, c redis.UniversalClient, id string, fields map[string]any, now time.Time, ttl time.Duration) error {
	pipe := c.Pipeline() // different slots: no MULTI
	r.Beat(ctx, pipe, id, fields, now, ttl)
	_, err := pipe.Exec(ctx)
	return err
}

// Deregister removes process id from the registry (two slots: no MULTI).
func (r Registry) Deregister(ctx context.Context, c redis.Cmdable, id string) error {
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.SRem(ctx, r.Set, id)
		p.ZRem(ctx, r.Expiry, id)
		p.Del(ctx, r.Hash(id))
		return nil
	})
	return err
}

// pruneSample is how many set members a prune checks for a missing expiry
// score (members registered by a release before the expiry set, or whose
// score was lost): a few per pass, so any such member is found in time
// without walking the set.
const pruneSample = 16

// Prune removes from the registry up to limit processes whose expiry score
// passed and whose hash is gone (they stopped beating), and returns their
// ids. An id whose score passed but whose hash still lives (its writer's
// clock is behind) is rescored from the hash's TTL. Cost: a few commands
// plus O(expired), whatever the registry's size. Safe to run concurrently
// (a live process removed by a race comes back at its next beat).
func (r Registry) Prune(ctx context.Context, c redis.Cmdable, now time.Time, limit int) ([]string, error) {
	ids, err := c.ZRangeArgs(ctx, redis.ZRangeArgs{Key: r.Expiry, Start: "-inf", Stop: strconv.FormatInt(now.UnixMilli(), 10),
		ByScore: true, Count: int64(limit)}).Result()
	if err != nil {
		return nil, err
	}
	// Members of the set with no score: give them one that is due now, so
	// the next pass checks them.
	sample, err := c.SRandMemberN(ctx, r.Set, pruneSample).Result()
	if err != nil {
		return nil, err
	}
	if len(sample) > 0 {
		scores, err := c.ZMScore(ctx, r.Expiry, sample...).Result()
		if err != nil {
			return nil, err
		}
		for i, s := range scores {
			if s == 0 {
				// ZMScore reports a missing member as 0; NX keeps a real score.
				if err := c.ZAddNX(ctx, r.Expiry, redis.Z{Score: float64(now.UnixMilli()), Member: sample[i]}).Err(); err != nil {
					return nil, err
				}
			}
		}
	}
	if len(ids) == 0 {
		return nil, nil
	}
	ttls := make([]*redis.DurationCmd, len(ids))
	if _, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			ttls[i] = p.PTTL(ctx, r.Hash(id))
		}
		return nil
	}); err != nil {
		return nil, err
	}
	var dead []string
	_, err = c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			switch ttl := ttls[i].Val(); {
			case ttl == -2: // no hash: the process stopped beating
				dead = append(dead, id)
				p.SRem(ctx, r.Set, id)
				p.ZRem(ctx, r.Expiry, id)
			case ttl > 0:
				p.ZAdd(ctx, r.Expiry, redis.Z{Score: float64(now.Add(ttl).UnixMilli()), Member: id})
			default: // a hash without TTL (written by hand): check again later
				p.ZAdd(ctx, r.Expiry, redis.Z{Score: float64(now.Add(time.Minute).UnixMilli()), Member: id})
			}
		}
		return nil
	})
	return dead, err
}

// TryLock takes the housekeeping lock name for ttl if nobody holds it: the
// caller then does the chore, and nobody else of the namespace does it
// before ttl ends (the lock is never released early, so the chore runs at
// most once per ttl).
func (d DB) TryLock(ctx context.Context, name, owner string, ttl time.Duration) (bool, error) {
	ok, err := d.C.SetNX(ctx, d.K.Lock(name), owner, ttl).Result()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	return ok, err
}

// pruneConsumersScript deletes the consumers named in ARGV[3..] of group
// ARGV[1] of stream KEYS[1] that hold no pending entry and have been idle
// longer than ARGV[2] ms, checked here, atomically with the deletion:
// XGROUP DELCONSUMER drops a consumer's pending entries, so a consumer that
// read a message since the caller looked is kept.
//
// KEYS: stream. ARGV: group, min idle ms, names... Reply: deleted names.
var pruneConsumersScript = redis.NewScript(`
local minIdle = tonumber(ARGV[2])
local want = {}
for i = 3, #ARGV do want[ARGV[i]] = true end
local out = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  local idle = tonumber(f['idle'])
  if f['inactive'] ~= nil and tonumber(f['inactive']) >= 0 then idle = math.min(idle, tonumber(f['inactive'])) end
  if want[f['name']] and tonumber(f['pending']) == 0 and idle > minIdle then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    out[#out + 1] = f['name']
  end
end
return out
`)

// PruneConsumers deletes the consumers of group on stream that hold no
// pending entry, have been idle longer than minIdle and are not in reg
// (their process is gone): every restart under a new id leaves one behind.
// A consumer with pending entries is never deleted (the reclaimer moves
// them first). It returns the deleted names. A missing stream or group is
// not an error.
func (d DB) PruneConsumers(ctx context.Context, stream, group string, minIdle time.Duration, reg Registry) ([]string, error) {
	cons, err := d.C.XInfoConsumers(ctx, stream, group).Result()
	if err != nil {
		if strings.Contains(err.Error(), "NOGROUP") || strings.Contains(err.Error(), "no such key") {
			return nil, nil
		}
		return nil, err
	}
	var idle []string
	for _, c := range cons {
		if c.Pending == 0 && c.Idle > minIdle {
			idle = append(idle, c.Name)
		}
	}
	if len(idle) == 0 {
		return nil, nil
	}
	live := make([]*redis.IntCmd, len(idle))
	if _, err := d.C.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, name := range idle {
			live[i] = p.Exists(ctx, reg.Hash(name))
		}
		return nil
	}); err != nil {
		return nil, err
	}
	args := []any{group, minIdle.Milliseconds()}
	for i, name := range idle {
		if live[i].Val() == 0 {
			args = append(args, name)
		}
	}
	if len(args) == 2 {
		return nil, nil
	}
	return pruneConsumersScript.Run(ctx, d.C, []string{stream}, args...).StringSlice()
}

// Records reads the registry r: the ids of its set, sorted, and each id's
// hash (empty when the hash expired: the process died without
// deregistering and is not pruned yet).
func (d DB) Records(ctx context.Context, r Registry) ([]string, []map[string]string, error) {
	c := d.C
	ids, err := c.SMembers(ctx, r.Set).Result()
	if err != nil {
		return nil, nil, err
	}
	sort.Strings(ids)
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	if len(ids) > 0 {
		if _, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range ids {
				cmds[i] = p.HGetAll(ctx, r.Hash(id))
			}
			return nil
		}); err != nil {
			return nil, nil, err
		}
	}
	out := make([]map[string]string, len(ids))
	for i := range ids {
		out[i] = cmds[i].Val()
	}
	return ids, out, nil
}

// BeatRecord writes a registry record now (see Registry.Beat).
func (d DB) BeatRecord(ctx context.Context, b Beat) error {
	return b.Registry.BeatNow(ctx, d.C, b.ID, b.Fields, b.Now, b.TTL)
}

// DeregisterFrom removes process id from registry reg.
func (d DB) DeregisterFrom(ctx context.Context, reg Registry, id string) error {
	return reg.Deregister(ctx, d.C, id)
}

// PruneRegistry prunes up to limit expired entries of registry reg (see
// Registry.Prune).
func (d DB) PruneRegistry(ctx context.Context, reg Registry, now time.Time, limit int) ([]string, error) {
	return reg.Prune(ctx, d.C, now, limit)
}
