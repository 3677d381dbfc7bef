package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/retry"
	"github.com/jonboulle/clockwork"
	"github.com/oklog/ulid/v2"
	"github.com/rs/zerolog"
)

// Signal is a signal a run received (graflow.Client.Signal, "graflow
// signal"): a named JSON payload, recorded in the run's log as
// signal_received.
type Signal struct {
	Name string
	// ID is the sender's idempotency key.
	ID string
	// By names the sender as it said (free text: a user name).
	By      string
	Payload json.RawMessage
	// At is when it was recorded (the sender's clock), Seq its log entry.
	At  time.Time
	Seq string
}

// ErrNoSignal is wrapped by the (permanent) error WaitSignal returns when
// its Timeout passes with no signal.
var ErrNoSignal = errors.New("no signal")

// errWorkerStopped ends the waits still open when the worker stops.
var errWorkerStopped = errors.New("worker stopped")

// WaitSignalOptions tune WaitSignal. The zero value waits for as long as
// the handler's context lives.
type WaitSignalOptions struct {
	// Timeout bounds the wait, counted from when the task's attempt was
	// dispatched (its last task_dispatched: a requeue starts a new wait;
	// a retry or a reclaim by another worker does not), so a task handed
	// from worker to worker keeps its deadline. When it passes with no
	// signal, WaitSignal returns a permanent error wrapping ErrNoSignal
	// ("no signal approve within 72h"). 0: no timeout.
	Timeout time.Duration
}

// signalPage is how many log entries one read of a signal scan returns.
const signalPage = 1000

// WaitSignal blocks until the task's run has received the signal name and
// returns it. A signal recorded before the call, even before the task was
// dispatched, is returned at once: the run's log is read from its first
// entry. A run takes one signal per name, so every task waiting for a
// name (and every attempt of one) gets the same signal.
//
// It does not poll: after the read, the wait joins this worker's signal
// loop, which blocks (XREAD BLOCK) on the logs of all the runs its tasks
// wait on, one connection per partition however many tasks wait. A
// waiting task holds its concurrency slot, so route such tasks to a pool
// of their own served with a high Concurrency.
//
// It returns context.Cause(ctx) when ctx ends first (the task's timeout,
// the run cancelled, the claim lost, the worker's drain timeout: a task
// handed back resumes its wait on another worker), a permanent error
// wrapping ErrNoSignal when opts.Timeout passes, a permanent error for an
// invalid name, and a Redis error that is not transient as is.
func (t *Task) WaitSignal(ctx context.Context, name string, opts WaitSignalOptions) (Signal, error) {
	h := t.signals
	if h == nil {
		return Signal{}, errors.New("worker: WaitSignal on a task the worker did not claim")
	}
	if err := rdb.CheckSignalName(name); err != nil {
		return Signal{}, Permanent(err)
	}
	var found *events.Event
	var last string
	var since time.Time // the dispatch of this attempt (a requeue dispatches again)
	err := retry.Do(ctx, retry.Policy{Initial: 100 * time.Millisecond, Max: 5 * time.Second, MaxElapsed: time.Minute}, func() error {
		var err error
		found, last, err = h.db.FindSignal(ctx, t.Run, name, "", signalPage, func(e events.Event) {
			if e.Type == events.TaskDispatched && e.Task == t.ID && e.Attempt <= t.Attempt {
				since = e.Time
			}
		})
		return err
	})
	switch {
	case ctx.Err() != nil:
		return Signal{}, context.Cause(ctx)
	case err != nil:
		return Signal{}, fmt.Errorf("wait for signal %s: %w", name, err)
	case found != nil:
		return signalOf(*found), nil
	}
	var timeout <-chan time.Time
	if opts.Timeout > 0 {
		now := h.clock.Now()
		if since.IsZero() || since.After(now) {
			since = now
		}
		left := since.Add(opts.Timeout).Sub(now)
		if left <= 0 {
			return Signal{}, noSignal(name, opts.Timeout)
		}
		timer := h.clock.NewTimer(left)
		defer timer.Stop()
		timeout = timer.Chan()
	}
	w, err := h.register(ctx, t.Run, name, last)
	if err != nil {
		return Signal{}, err
	}
	var end error
	select {
	case r := <-w.got:
		return r.signal()
	case <-timeout:
		end = noSignal(name, opts.Timeout)
	case <-ctx.Done():
		end = context.Cause(ctx)
	}
	h.unregister(t.Run, w)
	select {
	case r := <-w.got: // it came as the wait ended: take it
		return r.signal()
	default:
	}
	return Signal{}, end
}

func noSignal(name string, d time.Duration) error {
	s := d.String() // 72h0m0s → 72h, 1m0s → 1m
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return Permanent(fmt.Errorf("%w %s within %s", ErrNoSignal, name, s))
}

func signalOf(e events.Event) Signal {
	var b events.SignalReceivedBody
	_ = e.DecodeBody(&b) // FindSignal and the loop matched it by its decoded name
	return Signal{Name: b.Name, ID: b.ID, By: b.By, Payload: b.Payload, At: e.Time, Seq: e.Seq}
}

// signalHub serves the signal waits of a worker's handlers. A wait that
// did not find its signal in its run's log registers here with the id of
// the last entry it read; one loop per partition with waits blocks on the
// logs of all their runs in one XREAD (a partition's keys share a slot)
// and hands each signal to the waits of its name. A blocking read holds
// its connection, so a wait of its own per task would take one connection
// each from the pool the worker's heartbeats need too. A loop exits when
// its partition has no waits left; close waits for the loops. Safe for
// concurrent use.
//
// A wait that joins while its partition's loop is blocked in a read that
// does not cover its run wakes the loop (an entry in the loop's wake
// stream, which the read includes), so that the loop reads again with the
// run at once rather than when the read times out.
type signalHub struct {
	db       rdb.DB
	block    time.Duration
	clock    clockwork.Clock
	log      zerolog.Logger
	wakeName string // names the loops' wake streams: the worker's id and a suffix of this hub's

	ctx    context.Context // ends when the hub is closed
	cancel context.CancelFunc
	loops  sync.WaitGroup

	mu     sync.Mutex
	closed bool
	parts  map[int]map[string]*watchedRun // partition → run → its waits; a loop runs for each partition present
	// reading holds, per partition whose loop is in a read, the runs
	// that read covers and from which entry.
	reading map[int]map[string]string
	// wakes holds each partition's wake stream as its loops read it (a
	// loop that ends and starts again keeps reading after the entries
	// read); Key "" once it refused reads.
	wakes   map[int]*rdb.Wake
	woken   map[int]bool   // partitions whose wake stream was written (deleted at close)
	pending sync.WaitGroup // wakes decided and not yet written (close waits for them)
}

// watchedRun is a run some waits are on.
type watchedRun struct {
	after string // the loop reads the log after this entry
	waits map[*signalWait]struct{}
}

// signalWait is one task's wait for a signal.
type signalWait struct {
	name string
	got  chan hubResult // buffered: the loop never blocks on it
}

type hubResult struct {
	e   events.Event
	err error
}

func (r hubResult) signal() (Signal, error) {
	if r.err != nil {
		return Signal{}, r.err
	}
	return signalOf(r.e), nil
}

func newSignalHub(db rdb.DB, worker string, block time.Duration, clock clockwork.Clock, log zerolog.Logger) *signalHub {
	ctx, cancel := context.WithCancel(context.Background())
	// Two hubs of one worker id (two Workers of a process with the
	// default id) must not share, or delete, each other's wake streams.
	id := ulid.Make().String()
	return &signalHub{db: db, wakeName: worker + ":" + id[len(id)-6:], block: block, clock: clock, log: log, ctx: ctx, cancel: cancel,
		parts: map[int]map[string]*watchedRun{}, reading: map[int]map[string]string{},
		wakes: map[int]*rdb.Wake{}, woken: map[int]bool{}}
}

// register adds a wait for signal name of run, whose log was read up to
// entry after, and starts its partition's loop if none runs. If the loop
// is in a read that does not cover the run from that entry, it wakes the
// loop.
func (h *signalHub) register(ctx context.Context, run, name, after string) (*signalWait, error) {
	part := h.db.K.Partition(run)
	w, wake, err := h.add(part, run, name, after)
	if err != nil || wake == "" {
		return w, err
	}
	defer h.pending.Done()
	if err := h.db.WakeSignalLoop(ctx, wake); err != nil && ctx.Err() == nil {
		// The loop reads the run when its read times out instead.
		h.log.Warn().Err(err).Str("run", run).Msg("signal loop: wake it for a new wait")
	}
	return w, nil
}

// add is register's part under the lock; wake is the wake stream to
// write ("" none), a write close then waits for.
func (h *signalHub) add(part int, run, name, after string) (w *signalWait, wake string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, "", errWorkerStopped
	}
	runs := h.parts[part]
	if runs == nil {
		runs = map[string]*watchedRun{}
		h.parts[part] = runs
		h.loops.Add(1)
		go h.loop(part)
	}
	wr := runs[run]
	switch {
	case wr == nil:
		wr = &watchedRun{after: after, waits: map[*signalWait]struct{}{}}
		runs[run] = wr
	case seqBefore(after, wr.after):
		wr.after = after // the loop read past what this wait has seen: it reads again from here
	}
	w = &signalWait{name: name, got: make(chan hubResult, 1)}
	wr.waits[w] = struct{}{}
	if read, ok := h.reading[part]; ok {
		if from, covered := read[run]; (!covered || seqBefore(wr.after, from)) && h.wakes[part].Key != "" {
			wake = h.wakes[part].Key
			h.woken[part] = true
			h.pending.Add(1)
		}
	}
	return w, wake, nil
}

// unregister removes a wait (if the loop has not already).
func (h *signalHub) unregister(run string, w *signalWait) {
	h.mu.Lock()
	defer h.mu.Unlock()
	runs := h.parts[h.db.K.Partition(run)]
	if wr := runs[run]; wr != nil {
		delete(wr.waits, w)
		if len(wr.waits) == 0 {
			delete(runs, run)
		}
	}
}

// loop blocks on the logs of partition part's watched runs until none is
// left.
func (h *signalHub) loop(part int) {
	defer h.loops.Done()
	wait := retry.NewBackoff(retry.Policy{Initial: 100 * time.Millisecond, Max: 5 * time.Second})
	h.mu.Lock()
	wake := h.wakes[part]
	if wake == nil {
		// Read from its start: an entry written before this loop's
		// first read ends that read at once (harmless).
		wake = &rdb.Wake{Key: h.db.K.SignalWake(part, h.wakeName)}
		h.wakes[part] = wake
	}
	h.mu.Unlock()
	for {
		h.mu.Lock()
		runs := h.parts[part]
		if len(runs) == 0 {
			delete(h.parts, part)
			h.mu.Unlock()
			return
		}
		after := make(map[string]string, len(runs))
		for run, wr := range runs {
			after[run] = wr.after
		}
		h.reading[part] = after
		h.mu.Unlock()
		got, err := h.db.BlockOnLogs(h.ctx, after, wake, signalPage, h.block)
		h.mu.Lock()
		delete(h.reading, part)
		h.mu.Unlock()
		if err != nil && wake.Key != "" && !retry.Transient(err) && h.ctx.Err() == nil {
			if werr := h.db.StreamRefusesReads(h.ctx, wake.Key); werr != nil {
				// The wake stream itself (a key of another type, written
				// by hand): read without it; a new wait then waits for
				// the read to time out.
				h.log.Error().Err(werr).Str("key", wake.Key).Msg("signal loop: its wake stream refuses reads; reading without it")
				h.mu.Lock()
				wake.Key = ""
				delete(h.woken, part) // not ours to delete
				h.mu.Unlock()
				continue
			}
		}
		switch {
		case err == nil:
			wait.Reset()
			h.deliver(part, after, got)
		case h.ctx.Err() != nil:
		case retry.Transient(err):
			h.log.Warn().Err(err).Int("runs", len(after)).Msg("signal loop: read the logs of waiting tasks; retrying")
			wait.Wait(h.ctx)
		default:
			// Not transient (a log of the wrong type, a missing
			// permission): fail the waits of the runs whose own log
			// refuses the read, or, when none does alone, this
			// partition's waits; their tasks fail (and are retried
			// while they have attempts). One bad run failed them all.
			h.log.Error().Err(err).Int("runs", len(after)).Msg("signal loop: read the logs of waiting tasks")
			switch found, again := h.failRefused(part, after); {
			case found: // the bad runs' waits failed: read the others
			case again:
				wait.Wait(h.ctx)
			default:
				h.failAll(part, fmt.Errorf("wait for a signal: %w", err))
			}
		}
	}
}

// deliver hands the signals of got (read after the entries of read) to
// the waits of their names, which leave.
func (h *signalHub) deliver(part int, read map[string]string, got map[string]rdb.LogBatch) {
	h.mu.Lock()
	defer h.mu.Unlock()
	runs := h.parts[part]
	for run, b := range got {
		wr := runs[run]
		if wr == nil {
			continue // its waits left meanwhile
		}
		if wr.after == read[run] { // else a wait registered from an earlier entry meanwhile
			wr.after = b.Last
		}
		for _, e := range b.Events {
			if e.Type != events.SignalReceived {
				continue
			}
			var body events.SignalReceivedBody
			if e.DecodeBody(&body) != nil {
				continue
			}
			for w := range wr.waits {
				if w.name == body.Name {
					w.got <- hubResult{e: e}
					delete(wr.waits, w)
				}
			}
		}
		if len(wr.waits) == 0 {
			delete(runs, run)
		}
	}
}

// failRefused reads the log of each run of after alone (one pipeline,
// without blocking) and fails the waits of the runs whose own read fails
// for good. It reports whether it found any, and whether to read again
// rather than fail the partition's waits: some read failed for a moment
// (its run may be the bad one), or the hub is closing. With a single run
// watched its read was the one refused: neither.
func (h *signalHub) failRefused(part int, after map[string]string) (found, again bool) {
	if len(after) < 2 {
		return false, false
	}
	refused, err := h.db.LogRefusals(h.ctx, after)
	if err != nil {
		return false, true // the connection: the next read tells
	}
	for run, err := range refused {
		if retry.Transient(err) || h.ctx.Err() != nil {
			again = true
			continue
		}
		found = true
		h.log.Error().Err(err).Str("run", run).Msg("signal loop: the log of a waiting task's run refuses reads; failing its waits")
		h.mu.Lock()
		if wr := h.parts[part][run]; wr != nil {
			for w := range wr.waits {
				w.got <- hubResult{err: fmt.Errorf("wait for a signal: %w", err)}
			}
			delete(h.parts[part], run)
		}
		h.mu.Unlock()
	}
	return found, again || h.ctx.Err() != nil
}

// failAll ends every wait of partition part with err.
func (h *signalHub) failAll(part int, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for run, wr := range h.parts[part] {
		for w := range wr.waits {
			w.got <- hubResult{err: err}
		}
		delete(h.parts[part], run)
	}
}

// close ends the waits still open (errWorkerStopped), refuses new ones and
// wakes the loops blocked in a read (go-redis does not cut a read short
// when its context ends), waits for them and deletes the wake streams it
// wrote.
// Idempotent.
func (h *signalHub) close() {
	h.mu.Lock()
	h.closed = true
	parts := make([]int, 0, len(h.parts))
	for part := range h.parts {
		parts = append(parts, part)
	}
	h.mu.Unlock()
	for _, part := range parts {
		h.failAll(part, errWorkerStopped)
	}
	h.cancel()
	h.mu.Lock()
	inRead := make([]string, 0, len(h.reading))
	for part := range h.reading {
		if key := h.wakes[part].Key; key != "" {
			inRead = append(inRead, key)
			h.woken[part] = true
		}
	}
	h.mu.Unlock()
	for _, key := range inRead {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := h.db.WakeSignalLoop(ctx, key); err != nil {
			h.log.Debug().Err(err).Msg("signal loop: wake it to stop (it stops when its read times out)")
		}
		cancel()
	}
	h.loops.Wait()
	h.pending.Wait()
	h.mu.Lock()
	woken := h.woken
	h.woken = map[int]bool{}
	h.mu.Unlock()
	for part := range woken {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := h.db.DeleteWake(ctx, h.db.K.SignalWake(part, h.wakeName)); err != nil {
			h.log.Debug().Err(err).Int("partition", part).Msg("signal loop: delete its wake stream (it expires)")
		}
		cancel()
	}
}

// seqBefore reports whether stream entry id a comes before b ("" and "0"
// come first).
func seqBefore(a, b string) bool {
	am, as := splitSeq(a)
	bm, bs := splitSeq(b)
	return am < bm || am == bm && as < bs
}

func splitSeq(s string) (ms, seq uint64) {
	m, n, _ := strings.Cut(s, "-")
	ms, _ = strconv.ParseUint(m, 10, 64)
	seq, _ = strconv.ParseUint(n, 10, 64)
	return ms, seq
}
