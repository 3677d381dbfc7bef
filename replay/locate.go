package replay

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/redis/go-redis/v9"
)

// wanted is a task attempt whose dispatch should be somewhere.
type wanted struct {
	task     string
	attempt  int
	pool     string
	priority int
	record   string // the task's record when the search started
}

// locate finds where the dispatch of each wanted task attempt is: the run's
// outbox, the delayed set, or a queue stream (undelivered, or pending for a
// consumer: acked messages are deleted). It returns task → location for
// those found.
//
// The places are searched in the order a dispatch moves through them
// (outbox → delayed set → queue; every move writes the next place before
// removing the previous one), so a dispatch in transit is never missed. A
// queue message disappears only when its task is finished, after the task's
// record changed; callers re-read the records of tasks not found
// (stillLost) to tell a lost task from one that moved on.
func (c *Client) locate(ctx context.Context, run string, want []wanted) (map[string]string, error) {
	found := map[string]string{}
	if len(want) == 0 {
		return found, nil
	}
	byKey := map[string]wanted{}
	for _, w := range want {
		byKey[w.task+"\x00"+strconv.Itoa(w.attempt)] = w
	}
	match := func(task string, attempt int, where string) {
		if _, ok := byKey[task+"\x00"+strconv.Itoa(attempt)]; ok {
			if _, dup := found[task]; !dup {
				found[task] = where
			}
		}
	}

	outbox, err := c.cfg.Redis.LRange(ctx, c.db.K.RunOutbox(run), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("read outbox of run %s: %w", run, err)
	}
	for _, s := range outbox {
		if d, err := rdb.ParseDispatch(s); err == nil && d.Run == run {
			match(d.Task, d.Attempt, "outbox")
		}
	}

	var cursor uint64
	for {
		keys, next, err := c.cfg.Redis.ZScan(ctx, c.db.K.DelayedFor(run), cursor, "*|"+globEscape(run)+"|*", 1000).Result()
		if err != nil {
			return nil, fmt.Errorf("scan delayed set: %w", err)
		}
		for i := 0; i < len(keys); i += 2 { // member, score pairs
			if d, err := rdb.ParseDispatch(keys[i]); err == nil && d.Run == run {
				match(d.Task, d.Attempt, "delayed set")
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}

	streams := map[string]bool{}
	for _, w := range want {
		streams[c.db.K.QueueFor(run, w.pool, w.priority)] = true
	}
	for stream := range streams {
		start := "-"
		for {
			msgs, err := c.cfg.Redis.XRangeN(ctx, stream, start, "+", 1000).Result()
			if err != nil {
				return nil, fmt.Errorf("read queue %s: %w", stream, err)
			}
			for _, m := range msgs {
				if r, _ := m.Values[rdb.MsgRun].(string); r == run {
					t, _ := m.Values[rdb.MsgTask].(string)
					a, _ := m.Values[rdb.MsgAttempt].(string)
					n, _ := strconv.Atoi(a)
					match(t, n, "queue "+stream+" message "+m.ID)
				}
			}
			if len(msgs) < 1000 {
				break
			}
			start = "(" + msgs[len(msgs)-1].ID
		}
	}
	return found, nil
}

// stillLost returns the wanted entries not found whose task record is still
// the one the search started from (those that moved on are not lost).
func (c *Client) stillLost(ctx context.Context, run string, want []wanted, found map[string]string) ([]wanted, error) {
	var miss []wanted
	for _, w := range want {
		if _, ok := found[w.task]; !ok {
			miss = append(miss, w)
		}
	}
	if len(miss) == 0 {
		return nil, nil
	}
	fields := make([]string, len(miss))
	for i, w := range miss {
		fields[i] = w.task
	}
	vals, err := c.cfg.Redis.HMGet(ctx, c.db.K.RunState(run), fields...).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read state of run %s: %w", run, err)
	}
	var lost []wanted
	for i, w := range miss {
		if s, _ := vals[i].(string); s == w.record {
			lost = append(lost, w)
		}
	}
	return lost, nil
}

// globEscape escapes the glob metacharacters of Redis MATCH patterns.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
