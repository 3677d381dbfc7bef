package replay

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/projector"
	"github.com/redis/go-redis/v9"
)

// importChunk bounds the events appended per transaction, so an import of a
// large run never stalls Redis for long.
const importChunk = 500

// ExistsError is returned by Import for a run that already exists in the
// target namespace; it wraps ErrRunExists.
type ExistsError struct {
	Run, Namespace string
	Why            string
}

func (e *ExistsError) Error() string {
	return fmt.Sprintf("run %s already exists in namespace %q (%s): import refuses to overwrite it; import into another namespace or under another id (--run-id)", e.Run, e.Namespace, e.Why)
}

func (e *ExistsError) Unwrap() error { return ErrRunExists }

// Export writes run's log to w as JSON lines, in log order: one event per
// line, the envelope (id, seq, run, type, v, task, attempt, epoch, worker,
// time) with its body. Events of older schema versions are written upcast
// to events.CurrentVersion. It returns the number of events written.
func (c *Client) Export(ctx context.Context, run string, w io.Writer) (int, error) {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	start, n := "-", 0
	for {
		evs, err := c.readChunk(ctx, run, start)
		if err != nil {
			return n, err
		}
		for _, e := range evs {
			if err := enc.Encode(e); err != nil {
				return n, fmt.Errorf("export run %s: %w", run, err)
			}
			n++
		}
		if len(evs) < c.cfg.ReadCount {
			break
		}
		start = "(" + evs[len(evs)-1].Seq
	}
	if n == 0 {
		return 0, fmt.Errorf("%w: %s in namespace %q", ErrRunNotFound, run, c.cfg.Namespace)
	}
	return n, bw.Flush()
}

func (c *Client) readChunk(ctx context.Context, run, start string) ([]events.Event, error) {
	return c.db.ReadLog(ctx, run, start, "+", c.cfg.ReadCount, c.cfg.ReadCount)
}

var (
	runIDRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,128}$`)
	seqRE   = regexp.MustCompile(`^[0-9]+-[0-9]+$`)
)

// ReadExport parses an export (see Export). Each line goes through the
// same decoder as a log entry read from Redis (events.Decode: known type,
// supported version, JSON body, upcasting), so a file accepted here is a
// log the engine can fold. Every line must carry the same run id; seqs are
// all present and increasing, or all absent. Errors wrap ErrInvalidExport
// and name the line.
func ReadExport(r io.Reader) ([]events.Event, error) {
	br := bufio.NewReader(r)
	var out []events.Event
	run, withSeq := "", false
	for line := 1; ; line++ {
		raw, err := br.ReadBytes('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("read export: %w", err)
		}
		if b := bytes.TrimSpace(raw); len(b) > 0 {
			e, perr := parseLine(b)
			if perr == nil && len(out) == 0 {
				run, withSeq = e.Run, e.Seq != ""
			}
			switch {
			case perr != nil:
			case e.Run != run:
				perr = fmt.Errorf("event of run %q in an export of run %q", e.Run, run)
			case (e.Seq != "") != withSeq:
				perr = errors.New("seq present on some lines only")
			case withSeq && len(out) > 0 && projector.CompareSeq(e.Seq, out[len(out)-1].Seq) <= 0:
				perr = fmt.Errorf("seq %s does not follow %s", e.Seq, out[len(out)-1].Seq)
			}
			if perr != nil {
				return nil, fmt.Errorf("%w: line %d: %w", ErrInvalidExport, line, perr)
			}
			out = append(out, e)
		}
		if errors.Is(err, io.EOF) {
			break
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no events", ErrInvalidExport)
	}
	return out, nil
}

func parseLine(b []byte) (events.Event, error) {
	var e events.Event
	if err := json.Unmarshal(b, &e); err != nil {
		return e, err
	}
	if e.Run == "" || !runIDRE.MatchString(e.Run) {
		return e, fmt.Errorf("invalid run id %q", e.Run)
	}
	if e.Version == 0 {
		return e, fmt.Errorf("%w: missing schema version \"v\"", events.ErrMalformed)
	}
	if e.Seq != "" && (!seqRE.MatchString(e.Seq) || e.Seq == "0-0") {
		return e, fmt.Errorf("invalid seq %q", e.Seq)
	}
	// Through the log decoder: the same checks and upcasting as a stream
	// entry read from Redis.
	f := e.Fields()
	vals := make(map[string]any, len(f)/2)
	for i := 0; i < len(f); i += 2 {
		vals[f[i].(string)] = f[i+1]
	}
	return events.Decode(e.Run, e.Seq, vals)
}

// ImportOptions tune Import.
type ImportOptions struct {
	// RunID imports the run under another id (default: the exported one).
	RunID string
}

// ImportResult describes an import.
type ImportResult struct {
	Run       string `json:"run"`
	Namespace string `json:"namespace"`
	Events    int    `json:"events"`
	Tasks     int    `json:"tasks"`
	Status    string `json:"status"`
	// Continued: an earlier, interrupted import of the same file had
	// appended the first Continued events; the rest were appended.
	Continued int `json:"continued,omitempty"`
	// Problems counts the history problems of the imported log (see
	// Analyze); "graflow replay verify" lists them.
	Problems int `json:"problems"`
	// Unfinished: the run had not ended; "graflow resume" re-dispatches
	// the tasks that were queued or running at export time.
	Unfinished bool `json:"unfinished"`
}

// Import reads an export (see ReadExport) and rebuilds the run in this
// client's namespace, with state identical to the replayed state: it
// appends the events to the run's log (keeping the exported seqs when the
// file has them), writes the state hash (task records as
// projector.RecordOf, @status, @workflow, @cursor = last seq), the results
// hash (accepted results and @input), the dag hash (rdb.MetaOf of every
// submitted task) and the channel hash, indexes the run and points the
// projector feed at it.
//
// Import refuses to overwrite: if any key of the run exists it returns an
// *ExistsError (ErrRunExists), except a log that holds a prefix of the same
// events and no state, left by an interrupted import, which it completes.
// A file that does not parse or fold returns ErrInvalidExport; nothing is
// written then.
func (c *Client) Import(ctx context.Context, r io.Reader, opts ImportOptions) (*ImportResult, error) {
	evs, err := ReadExport(r)
	if err != nil {
		return nil, err
	}
	return c.ImportEvents(ctx, evs, opts)
}

// ImportEvents is Import for events already read (see ReadExport).
func (c *Client) ImportEvents(ctx context.Context, evs []events.Event, opts ImportOptions) (*ImportResult, error) {
	if len(evs) == 0 {
		return nil, fmt.Errorf("%w: no events", ErrInvalidExport)
	}
	run := opts.RunID
	if run == "" {
		run = evs[0].Run
	}
	if !runIDRE.MatchString(run) {
		return nil, fmt.Errorf("%w: invalid run id %q: use 1-128 letters, digits, '_', '.', ':', '-'", ErrInvalidExport, run)
	}
	evs = append([]events.Event(nil), evs...)
	for i := range evs {
		evs[i].Run = run
	}
	a, err := Analyze(run, evs)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidExport, err)
	}
	if a.Run.Status == projector.RunUnknown || evs[0].Type != events.RunSubmitted {
		return nil, fmt.Errorf("%w: the first event is %s, not run_submitted", ErrInvalidExport, evs[0].Type)
	}
	res := &ImportResult{Run: run, Namespace: c.cfg.Namespace, Events: len(evs), Tasks: len(a.Run.Tasks),
		Status: string(a.Run.Status), Problems: len(a.Problems), Unfinished: !a.Run.Status.Terminal()}

	done, err := c.importedPrefix(ctx, run, evs)
	if err != nil {
		return nil, err
	}
	res.Continued = done
	last, err := c.appendLog(ctx, run, evs, done)
	if err != nil {
		return nil, err
	}
	if err := c.writeState(ctx, run, a, evs, last); err != nil {
		return nil, err
	}
	pipe := c.cfg.Redis.Pipeline()
	pipe.ZAddNX(ctx, c.db.K.Runs(), redis.Z{Score: float64(evs[0].Time.UnixMilli()), Member: run})
	c.db.PointFeed(ctx, pipe, run)
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("index imported run %s: %w (run \"graflow resume %s\" to repair)", run, err, run)
	}
	return res, nil
}

// importedPrefix checks that run does not exist, or holds only a log that
// is a prefix of evs (an interrupted import); it returns that prefix's length.
func (c *Client) importedPrefix(ctx context.Context, run string, evs []events.Event) (int, error) {
	k := c.db.K
	exists := func(why string) error { return &ExistsError{Run: run, Namespace: c.cfg.Namespace, Why: why} }
	n, err := c.cfg.Redis.Exists(ctx, k.RunState(run)).Result()
	if err != nil {
		return 0, fmt.Errorf("check run %s: %w", run, err)
	}
	if n > 0 {
		return 0, exists("it has live state")
	}
	for _, key := range []string{k.RunResults(run), k.RunDAG(run), k.RunOutbox(run), k.RunChannel(run)} {
		if n, err := c.cfg.Redis.Exists(ctx, key).Result(); err != nil {
			return 0, fmt.Errorf("check run %s: %w", run, err)
		} else if n > 0 {
			return 0, exists("key " + key + " exists")
		}
	}
	done, start := 0, "-"
	for {
		msgs, err := c.cfg.Redis.XRangeN(ctx, k.RunLog(run), start, "+", 1000).Result()
		if err != nil {
			return 0, fmt.Errorf("check run %s: %w", run, err)
		}
		for _, m := range msgs {
			id, _ := m.Values[events.FieldID].(string)
			if done >= len(evs) || id != evs[done].ID || (evs[done].Seq != "" && m.ID != evs[done].Seq) {
				return 0, exists("its log holds other events")
			}
			done++
		}
		if len(msgs) < 1000 {
			return done, nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

// appendLog appends evs[from:] to run's log in transactions of importChunk
// events, each checking (WATCH) that the log holds exactly the events
// before it and that no state appeared. It returns the last entry's id.
func (c *Client) appendLog(ctx context.Context, run string, evs []events.Event, from int) (string, error) {
	k := c.db.K
	last := ""
	if from > 0 {
		last = evs[from-1].Seq
		if last == "" {
			msgs, err := c.cfg.Redis.XRevRangeN(ctx, k.RunLog(run), "+", "-", 1).Result()
			if err != nil || len(msgs) == 0 {
				return "", fmt.Errorf("read log of run %s: %w", run, err)
			}
			last = msgs[0].ID
		}
	}
	for i := from; i < len(evs); i += importChunk {
		chunk := evs[i:min(i+importChunk, len(evs))]
		var cmds []*redis.StringCmd
		err := c.cfg.Redis.Watch(ctx, func(tx *redis.Tx) error {
			n, err := tx.XLen(ctx, k.RunLog(run)).Result()
			if err != nil {
				return err
			}
			st, err := tx.Exists(ctx, k.RunState(run)).Result()
			if err != nil {
				return err
			}
			if n != int64(i) || st > 0 {
				return &ExistsError{Run: run, Namespace: c.cfg.Namespace, Why: "another writer changed it during the import"}
			}
			cmds = cmds[:0]
			_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
				for _, e := range chunk {
					id := e.Seq
					if id == "" {
						id = "*"
					}
					cmds = append(cmds, p.XAdd(ctx, &redis.XAddArgs{Stream: k.RunLog(run), ID: id, Values: e.Fields()}))
				}
				return nil
			})
			return err
		}, k.RunLog(run), k.RunState(run))
		if errors.Is(err, redis.TxFailedErr) {
			return "", fmt.Errorf("%w: import of run %s: the log changed during the import", ErrConcurrentChange, run)
		}
		if err != nil {
			return "", fmt.Errorf("append to log of run %s: %w", run, err)
		}
		last = cmds[len(cmds)-1].Val()
	}
	return last, nil
}

// writeState writes the state, results, dag and channel hashes of an
// imported run in one transaction, if the run still has no state.
func (c *Client) writeState(ctx context.Context, run string, a *Analysis, evs []events.Event, last string) error {
	k := c.db.K
	r := a.Run
	state := []any{rdb.FieldRunStatus, string(r.Status), rdb.FieldRunWorkflow, r.Workflow, rdb.FieldRunCursor, last}
	for _, t := range r.Tasks {
		// No field means pending (the engine never writes a pending
		// record, except for a requeued task, which keeps its attempt).
		if rec := projector.RecordOf(t); rec != (rdb.Record{Status: projector.TaskPending}) {
			state = append(state, t.Spec.ID, rec.String())
		}
	}
	results := []any{rdb.FieldRunInput, string(r.Input)}
	for _, t := range r.Tasks {
		if t.Status == projector.TaskSucceeded {
			results = append(results, t.Spec.ID, string(t.Result))
		}
	}
	specs := a.Specs()
	dag := make([]any, 0, 2*len(specs))
	for _, s := range specs {
		m, err := json.Marshal(rdb.MetaOf(s))
		if err != nil {
			return fmt.Errorf("%w: task %s metadata: %w", ErrInvalidExport, s.ID, err)
		}
		dag = append(dag, s.ID, string(m))
	}
	var channel []any
	for _, e := range evs {
		if e.Type == events.ChannelWritten {
			var b events.ChannelWrittenBody
			if e.DecodeBody(&b) == nil && b.Key != "" {
				channel = append(channel, b.Key, string(b.Value))
			}
		}
	}
	err := c.cfg.Redis.Watch(ctx, func(tx *redis.Tx) error {
		st, err := tx.Exists(ctx, k.RunState(run)).Result()
		if err != nil {
			return err
		}
		if st > 0 {
			return &ExistsError{Run: run, Namespace: c.cfg.Namespace, Why: "another writer created its state during the import"}
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			hsetChunks(ctx, p, k.RunDAG(run), dag)
			hsetChunks(ctx, p, k.RunResults(run), results)
			hsetChunks(ctx, p, k.RunChannel(run), channel)
			hsetChunks(ctx, p, k.RunState(run), state)
			return nil
		})
		return err
	}, k.RunState(run), k.RunLog(run))
	if errors.Is(err, redis.TxFailedErr) {
		return fmt.Errorf("%w: import of run %s: its keys changed while the state was written", ErrConcurrentChange, run)
	}
	if err != nil {
		return fmt.Errorf("write state of run %s: %w", run, err)
	}
	return nil
}

// hsetChunks queues HSETs of field/value pairs, 1000 pairs per command.
func hsetChunks(ctx context.Context, p redis.Pipeliner, key string, pairs []any) {
	for i := 0; i < len(pairs); i += 2000 {
		p.HSet(ctx, key, pairs[i:min(i+2000, len(pairs))]...)
	}
}

// seqMS returns the milliseconds part of a stream id.
func seqMS(seq string) int64 {
	for i := 0; i < len(seq); i++ {
		if seq[i] == '-' {
			n, _ := strconv.ParseInt(seq[:i], 10, 64)
			return n
		}
	}
	n, _ := strconv.ParseInt(seq, 10, 64)
	return n
}
