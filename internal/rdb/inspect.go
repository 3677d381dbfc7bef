package rdb

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/statehash"
	"github.com/redis/go-redis/v9"
)

// This file is the read side of the boundary for runs: listing runs,
// reading a run's log (decoded, or tolerant of bad entries) and live
// projection, and following a log. The queues' side (where a task's
// dispatch is, queue statistics, dead letters) is in inspect_queues.go.
// Nothing here writes.

// RunRow is one run of the run index with the live fields of its state
// hash. Err is set (and the fields empty) when the state hash cannot be
// read, e.g. a key of the wrong type: the other rows are still good.
type RunRow struct {
	ID          string
	SubmittedMS int64
	Status      string
	Workflow    string
	Quarantine  string
	Err         error
}

// RunPage reads up to n runs of the run index, newest first, from rank
// start, with their @status, @workflow and @quarantine. A run whose state
// cannot be read gets RunRow.Err; an error is returned only when the
// index itself or the connection fails.
func (d DB) RunPage(ctx context.Context, start, n int64) ([]RunRow, error) {
	zs, err := d.C.ZRevRangeWithScores(ctx, d.K.Runs(), start, start+n-1).Result()
	if err != nil {
		return nil, fmt.Errorf("read run index: %w", err)
	}
	out := make([]RunRow, len(zs))
	if len(zs) == 0 {
		return out, nil
	}
	pipe := d.C.Pipeline()
	cmds := make([]*redis.SliceCmd, len(zs))
	for i, z := range zs {
		id, _ := z.Member.(string)
		out[i] = RunRow{ID: id, SubmittedMS: int64(z.Score)}
		cmds[i] = pipe.HMGet(ctx, d.K.RunState(id), FieldRunStatus, FieldRunWorkflow, FieldRunQuarantine)
	}
	_, _ = pipe.Exec(ctx) // each command's error is read below
	for i, cmd := range cmds {
		v, err := cmd.Result()
		if err != nil {
			if !isReplyError(err) {
				return nil, fmt.Errorf("read run states: %w", err)
			}
			out[i].Err = fmt.Errorf("read state of run %s: %w", out[i].ID, err)
			continue
		}
		if len(v) == 3 {
			out[i].Status, _ = v[0].(string)
			out[i].Workflow, _ = v[1].(string)
			out[i].Quarantine, _ = v[2].(string)
		}
	}
	if err := d.loggedRows(ctx, out, cmds); err != nil {
		return nil, err
	}
	return out, nil
}

// loggedRows fills the rows of runs without state (cmds[i] read nothing)
// from their logs: a succeeded run keeps only its log, whose first entry
// names the workflow. The rows of runs that are gone stay empty.
func (d DB) loggedRows(ctx context.Context, out []RunRow, cmds []*redis.SliceCmd) error {
	var idx []int
	for i, cmd := range cmds {
		if v, err := cmd.Result(); err == nil && len(v) == 3 && v[0] == nil {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return nil
	}
	pipe := d.C.Pipeline()
	tails := make([]*redis.XMessageSliceCmd, len(idx))
	heads := make([]*redis.XMessageSliceCmd, len(idx))
	for j, i := range idx {
		tails[j] = pipe.XRevRangeN(ctx, d.K.RunLog(out[i].ID), "+", "-", loggedEndScan)
		heads[j] = pipe.XRangeN(ctx, d.K.RunLog(out[i].ID), "-", "+", 1)
	}
	if _, err := pipe.Exec(ctx); err != nil && !isReplyError(err) {
		return fmt.Errorf("read run logs: %w", err)
	}
	for j, i := range idx {
		st, more := loggedEnd(tails[j].Val())
		if more && len(tails[j].Val()) == loggedEndScan {
			var err error
			if st, err = d.LoggedEnd(ctx, out[i].ID); err != nil {
				out[i].Err = err
				continue
			}
		}
		if st == "" {
			continue
		}
		out[i].Status = st
		if first := heads[j].Val(); len(first) > 0 {
			if e, err := events.Decode(out[i].ID, first[0].ID, first[0].Values); err == nil {
				var b events.RunSubmittedBody
				if e.DecodeBody(&b) == nil {
					out[i].Workflow = b.Workflow
				}
			}
		}
	}
	return nil
}

// isReplyError reports whether err is an error reply of Redis to one
// command (WRONGTYPE, NOPERM, ...), as opposed to a connection failure.
func isReplyError(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && !errors.Is(err, redis.Nil)
}

// RunIDs lists the runs of the run index, oldest first.
func (d DB) RunIDs(ctx context.Context) ([]string, error) {
	ids, err := d.C.ZRange(ctx, d.K.Runs(), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("read run index: %w", err)
	}
	return ids, nil
}

// RunStatus returns run's @status, or for a succeeded run that keeps only
// its log "succeeded" ("" when the run does not exist).
func (d DB) RunStatus(ctx context.Context, run string) (string, error) {
	st, err := d.C.HGet(ctx, d.K.RunState(run), FieldRunStatus).Result()
	if errors.Is(err, redis.Nil) {
		return d.LoggedEnd(ctx, run)
	}
	return st, err
}

// loggedEndScan is how many of a log's last entries a page of LoggedEnd
// reads (as the scripts' loggedend).
const loggedEndScan = 16

// LoggedEnd returns "succeeded" when run's log's last entry other than a
// result_rejected is run_succeeded: for a run without a state hash, that
// is a succeeded run, whose end keeps only its log (see endLua); ""
// otherwise (the run is gone). Call it only for a run without state.
func (d DB) LoggedEnd(ctx context.Context, run string) (string, error) {
	from := "+"
	for {
		msgs, err := d.C.XRevRangeN(ctx, d.K.RunLog(run), from, "-", loggedEndScan).Result()
		if err != nil {
			return "", fmt.Errorf("read the end of run %s's log: %w", run, err)
		}
		st, more := loggedEnd(msgs)
		if !more || len(msgs) < loggedEndScan {
			return st, nil
		}
		from = "(" + msgs[len(msgs)-1].ID
	}
}

// loggedEnd is LoggedEnd over a page of a log's last entries, newest
// first; more says every entry of the page was a rejection.
func loggedEnd(msgs []Message) (status string, more bool) {
	for _, m := range msgs {
		t, _ := m.Values[events.FieldType].(string)
		if t == string(events.ResultRejected) {
			continue
		}
		if t == string(events.RunSucceeded) {
			return string(events.RunStatusSucceeded), false
		}
		return "", false
	}
	return "", true
}

// LogExists reports whether run has a log.
func (d DB) LogExists(ctx context.Context, run string) (bool, error) {
	n, err := d.C.Exists(ctx, d.K.RunLog(run)).Result()
	return n > 0, err
}

// Live is a run's live projection read in one transaction: its state
// hash, split as SplitState does, and the id of its log's last entry (""
// for no log). Added, Length and MaxDeleted are the log's XINFO STREAM counters
// (entries ever added, entries now, last deleted id), read after.
type Live struct {
	State, Results, DAG map[string]string
	Last                string
	Added, Length       int64
	MaxDeleted          string
}

// SplitState splits a run's state hash into its records and run fields
// (state), its tasks' results and input (results: task → result, and
// @input) and its tasks' metadata (dag: task → meta JSON), the three views
// replay verify and export work with.
func SplitState(h map[string]string) (state, results, dag map[string]string) {
	state, results, dag = map[string]string{}, map[string]string{}, map[string]string{}
	for f, v := range h {
		switch {
		case f == FieldRunInput:
			results[f] = v
		case strings.HasPrefix(f, statehash.FieldResultPrefix):
			results[f[len(statehash.FieldResultPrefix):]] = v
		case strings.HasPrefix(f, statehash.FieldMetaPrefix):
			dag[f[len(statehash.FieldMetaPrefix):]] = v
		default:
			state[f] = v
		}
	}
	return state, results, dag
}

// ReadLive reads run's live projection (see Live).
func (d DB) ReadLive(ctx context.Context, run string) (Live, error) {
	var l Live
	var st *redis.MapStringStringCmd
	var tail *redis.XMessageSliceCmd
	_, err := d.C.TxPipelined(ctx, func(p redis.Pipeliner) error {
		st = p.HGetAll(ctx, d.K.RunState(run))
		tail = p.XRevRangeN(ctx, d.K.RunLog(run), "+", "-", 1)
		return nil
	})
	if err != nil {
		return l, fmt.Errorf("read live state of run %s: %w", run, txCause(err, st, tail))
	}
	l.State, l.Results, l.DAG = SplitState(st.Val())
	if msgs := tail.Val(); len(msgs) > 0 {
		l.Last = msgs[0].ID
		if info, err := d.C.XInfoStream(ctx, d.K.RunLog(run)).Result(); err == nil {
			l.Added, l.Length, l.MaxDeleted = info.EntriesAdded, info.Length, info.MaxDeletedEntryID
		}
	}
	return l, nil
}

// txCause returns why a MULTI block failed: for EXECABORT (Redis
// discarded the block because a command was refused as it was queued),
// the first queued command's own error, e.g. LOADING while Redis restarts
// or NOPERM, which callers can classify (a transient LOADING is retried;
// EXECABORT alone says nothing); err otherwise.
func txCause(err error, cmds ...redis.Cmder) error {
	if err == nil || !strings.HasPrefix(err.Error(), "EXECABORT") {
		return err
	}
	for _, c := range cmds {
		if e := c.Err(); e != nil && !strings.HasPrefix(e.Error(), "EXECABORT") {
			return fmt.Errorf("%w (the transaction was discarded: %s)", e, err.Error())
		}
	}
	return err
}

// DecodeLog decodes entries of run's log (stream order kept).
func DecodeLog(run string, msgs []Message) ([]events.Event, error) {
	out := make([]events.Event, 0, len(msgs))
	for _, m := range msgs {
		e, err := events.Decode(run, m.ID, m.Values)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// BadEntry is a log entry that does not decode.
type BadEntry struct {
	Seq string
	Err error
}

// ReadLogTolerant reads and decodes run's whole log, page entries per round
// trip, and returns the entries that decode and, apart, every one that
// does not.
func (d DB) ReadLogTolerant(ctx context.Context, run string, page int) ([]events.Event, []BadEntry, error) {
	var out []events.Event
	var bad []BadEntry
	start := "-"
	for {
		msgs, err := d.C.XRangeN(ctx, d.K.RunLog(run), start, "+", int64(page)).Result()
		if err != nil {
			return nil, nil, fmt.Errorf("read log of run %s: %w", run, err)
		}
		evs, b := DecodeTolerant(run, msgs)
		out, bad = append(out, evs...), append(bad, b...)
		if len(msgs) < page {
			return out, bad, nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

// DecodeTolerant decodes run's log entries msgs, listing those that do not
// decode instead of failing.
func DecodeTolerant(run string, msgs []Message) ([]events.Event, []BadEntry) {
	var out []events.Event
	var bad []BadEntry
	for _, m := range msgs {
		e, err := events.Decode(run, m.ID, m.Values)
		if err != nil {
			bad = append(bad, BadEntry{Seq: m.ID, Err: err})
			continue
		}
		out = append(out, e)
	}
	return out, bad
}

// ReadLog reads and decodes run's log entries from start to end (XRANGE
// bounds: "-", "+", an id, or "(" + id for an exclusive start), page entries
// per round trip; limit > 0 stops after one page of at most limit entries.
func (d DB) ReadLog(ctx context.Context, run, start, end string, page, limit int) ([]events.Event, error) {
	if limit > 0 {
		page = limit
	}
	var out []events.Event
	for {
		msgs, err := d.C.XRangeN(ctx, d.K.RunLog(run), start, end, int64(page)).Result()
		if err != nil {
			return nil, fmt.Errorf("read log of run %s: %w", run, err)
		}
		evs, err := DecodeLog(run, msgs)
		if err != nil {
			return nil, err
		}
		out = append(out, evs...)
		if limit > 0 || len(msgs) < page {
			return out, nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

// ReadLogAfter reads and decodes the entries of run's log after the entry
// id after ("", "0" or "0-0": from the first), page per round trip;
// limit > 0 stops after one page of at most limit entries (see ReadLog).
func (d DB) ReadLogAfter(ctx context.Context, run, after string, page, limit int) ([]events.Event, error) {
	start := "-"
	if after != "" && after != "0" && after != "0-0" {
		start = "(" + after
	}
	return d.ReadLog(ctx, run, start, "+", page, limit)
}

// Tail calls fn with each batch of run's log entries after the entry id
// from ("" or "0-0": from the first), in order, at most count per batch,
// and blocks on the log (XREAD BLOCK, no polling) for new ones; a read
// that times out calls fn with an empty batch. block bounds one XREAD
// (clipped to ctx's deadline). Tail returns when fn returns stop or an
// error (returned), with ctx.Err() when ctx is done, or with the error of
// a read.
func (d DB) Tail(ctx context.Context, run, from string, count int, block time.Duration,
	fn func(batch []Message) (stop bool, err error)) error {
	last := from
	if last == "" {
		last = "0-0"
	}
	for {
		b := block
		if dl, ok := ctx.Deadline(); ok {
			b = min(b, time.Until(dl))
		}
		if b <= 0 {
			return context.DeadlineExceeded
		}
		res, err := d.C.XRead(ctx, &redis.XReadArgs{Streams: []string{d.K.RunLog(run), last}, Count: int64(count), Block: b}).Result()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		var batch []Message
		for _, s := range res {
			batch = append(batch, s.Messages...)
		}
		if len(batch) > 0 {
			last = batch[len(batch)-1].ID
		}
		if stop, err := fn(batch); stop || err != nil {
			return err
		}
	}
}

// TaskRecord reads a task's record in its run's state ("pending" when it
// has none).
func (d DB) TaskRecord(ctx context.Context, run, task string) (Record, error) {
	s, err := d.C.HGet(ctx, d.K.RunState(run), task).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return Record{}, err
	}
	return ParseRecord(s)
}

// endPage is how many entries EndedBy reads back per round trip.
const endPage = 64

// EndedBy reports whether the run had ended by entry at of its log ("" or
// "0": before any entry, so no): its last run_succeeded, run_failed,
// run_cancelled or run_quarantined up to at, with no task_requeued (a
// reopen) after it. It reads the log backwards from at until it finds
// either; a missing log has not ended.
func (d DB) EndedBy(ctx context.Context, run, at string) (bool, error) {
	if at == "" || at == "0" {
		return false, nil
	}
	key, from := d.K.RunLog(run), at
	for {
		page, err := d.C.XRevRangeN(ctx, key, from, "-", endPage).Result()
		if err != nil {
			return false, fmt.Errorf("read log of run %s: %w", run, err)
		}
		for _, m := range page {
			switch t, _ := m.Values[events.FieldType].(string); {
			case events.Type(t).EndsRun():
				return true, nil
			case events.Type(t) == events.TaskRequeued:
				return false, nil
			}
		}
		if len(page) < endPage {
			return false, nil
		}
		from = "(" + page[len(page)-1].ID
	}
}
