package rdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/graflow-go/graflow/internal/statehash"
	"github.com/redis/go-redis/v9"
)

// Result TTL: the finish script that stores the result of a task with a
// result TTL also sets the task's expiry field in the state hash
// (statehash.ResultExpiryField, Unix ms) and adds "<run>|<task>" to its
// partition's expiry set, scored by that time; the projector's delayed
// mover calls ExpireResults, which deletes the stored result when it is
// due. The expiry field stays: a read tells an expired result from one
// never stored, and a read after the due time but before the deletion is
// expired too (ReadResult). The log keeps task_succeeded and its result.

// ErrResultExpired is returned when a task's stored result is read after
// its result TTL.
var ErrResultExpired = errors.New("the task's result expired (result TTL)")

// expiredResult stands in for an expired dependency's result in a claim's
// and ReadUpstream's replies (a result is JSON: it never starts with "!").
const expiredResult = "!expired"

// IsExpiredResult reports whether an upstream result read by Claim or
// ReadUpstream is the mark of an expired result.
func IsExpiredResult(raw []byte) bool { return string(raw) == expiredResult }

// StoredResult is a task's stored result as ReadResult finds it.
type StoredResult struct {
	RunStatus string // "" when the run does not exist
	Record    Record
	Result    json.RawMessage // nil when none is stored
	// ExpiresMS is when the result expires (Unix ms; 0: never).
	ExpiresMS int64
}

// Expired reports whether the result expired at nowMS: its TTL passed,
// whether or not ExpireResults deleted it yet.
func (s StoredResult) Expired(nowMS int64) bool { return s.ExpiresMS > 0 && nowMS >= s.ExpiresMS }

// ReadResult reads task's stored result, record and result expiry, and
// the run's status, in one command.
func (d DB) ReadResult(ctx context.Context, run, task string) (StoredResult, error) {
	v, err := d.C.HMGet(ctx, d.K.RunState(run), FieldRunStatus, task, statehash.ResultExpiryField(task), ResultField(task)).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return StoredResult{}, fmt.Errorf("read result of %s/%s: %w", run, task, err)
	}
	var out StoredResult
	out.RunStatus, _ = v[0].(string)
	rec, _ := v[1].(string)
	if out.Record, err = ParseRecord(rec); err != nil {
		return out, fmt.Errorf("read result of %s/%s: %w", run, task, err)
	}
	if x, _ := v[2].(string); x != "" {
		if out.ExpiresMS, err = strconv.ParseInt(x, 10, 64); err != nil {
			return out, fmt.Errorf("read result of %s/%s: malformed expiry %q", run, task, x)
		}
	}
	if r, _ := v[3].(string); r != "" {
		out.Result = json.RawMessage(r)
	}
	return out, nil
}

// expireResultsScript deletes due stored results: each member of the
// partition's expiry set that is still due (a later store moves its
// score on) is removed, and only then is its result deleted, so two
// movers never race a fresh result away. A member whose state hash holds
// another type (written by hand or another application) is not removed
// but parked until ARGV[2] and reported: the rest of the page expires.
//
// KEYS: 1 the expiry set, then the runs' state hashes
// ARGV: 1 now ms, 2 when to look at a stuck member again (ms), 3 n, then
// n x (member, results key index, task)
// Reply: {number of results deleted, the stuck members...}
var expireResultsScript = redis.NewScript(`
local now, gone, stuck, typeof = tonumber(ARGV[1]), 0, {}, {}
for i = 0, tonumber(ARGV[3]) - 1 do
  local a = 4 + 3 * i
  local key = KEYS[tonumber(ARGV[a + 1])]
  local due = redis.call('ZSCORE', KEYS[1], ARGV[a])
  if due and tonumber(due) <= now then
    local t = typeof[key]
    if not t then
      t = redis.call('TYPE', key)['ok']
      typeof[key] = t
    end
    -- Checked before the ZREM: a ZREM followed by a failed HDEL would
    -- forget the expiry.
    if t ~= 'hash' and t ~= 'none' then
      redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[a])
      stuck[#stuck + 1] = ARGV[a]
    else
      redis.call('ZREM', KEYS[1], ARGV[a])
      gone = gone + redis.call('HDEL', key, '@r:' .. ARGV[a + 2])
    end
  end
end
return {gone, unpack(stuck)}
`)

// ExpireResults deletes up to n stored results of partition part that are
// due at nowMS, and returns how many it deleted and the due time of the
// earliest expiry left (0: none). A result whose run's state hash holds
// another type is not deleted: its expiry is parked until retryMS and
// returned in stuck.
func (d DB) ExpireResults(ctx context.Context, part int, nowMS, retryMS int64, n int) (deleted, next int64, stuck []string, err error) {
	set := d.K.Expiries(part)
	due, err := d.C.ZRangeArgs(ctx, redis.ZRangeArgs{Key: set, Start: "-inf", Stop: strconv.FormatInt(nowMS, 10), ByScore: true, Count: int64(n)}).Result()
	if err != nil {
		return 0, 0, nil, fmt.Errorf("read the result expiries of partition %d: %w", part, err)
	}
	if len(due) > 0 {
		keys := []string{set}
		var targets keyIndex
		args := []any{nowMS, retryMS, 0}
		var malformed []any
		for _, m := range due {
			run, task, ok := strings.Cut(m, "|")
			if !ok || run == "" || task == "" || d.K.Partition(run) != part {
				malformed = append(malformed, m)
				continue
			}
			args = append(args, m, targets.of(&keys, d.K.RunState(run)), task)
		}
		if len(malformed) > 0 {
			if err := d.C.ZRem(ctx, set, malformed...).Err(); err != nil {
				return 0, 0, nil, fmt.Errorf("drop malformed result expiries of partition %d: %w", part, err)
			}
		}
		if n := (len(args) - 3) / 3; n > 0 {
			args[2] = n
			reply, err := expireResultsScript.Run(ctx, d.C, keys, args...).Slice()
			if err != nil {
				return 0, 0, nil, fmt.Errorf("expire results of partition %d: %w", part, err)
			}
			if len(reply) > 0 {
				deleted, _ = reply[0].(int64)
			}
			for _, m := range reply[min(1, len(reply)):] {
				if m, ok := m.(string); ok {
					stuck = append(stuck, m)
				}
			}
		}
	}
	first, err := d.C.ZRangeWithScores(ctx, set, 0, 0).Result()
	if err != nil {
		return deleted, 0, stuck, fmt.Errorf("read the result expiries of partition %d: %w", part, err)
	}
	if len(first) > 0 {
		next = max(int64(first[0].Score), 1)
	}
	return deleted, next, stuck, nil
}
