package replay

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/statehash"
	"github.com/graflow-go/graflow/projector"
)

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

// WriteExport writes evs to w as JSON lines, in order: one event per line,
// the envelope (id, seq, run, type, v, task, attempt, epoch, worker, time)
// with its body. Decoded events are upcast to events.CurrentVersion, so
// that is the version written. Call it once per chunk of a long log.
func WriteExport(w io.Writer, evs []events.Event) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for _, e := range evs {
		if err := enc.Encode(e); err != nil {
			return err
		}
	}
	return nil
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

// Import is an export ready to be written into a namespace (see
// PrepareImport).
type Import struct {
	// Run is the id the run is imported under.
	Run string
	// Events are the exported events, renamed to Run.
	Events []events.Event
	// Analysis is their replay.
	Analysis *Analysis
}

// PrepareImport checks that evs, an export (see ReadExport), can be
// imported under opts.RunID (default: the exported id) and replays them.
// Errors wrap ErrInvalidExport.
func PrepareImport(evs []events.Event, opts ImportOptions) (*Import, error) {
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
	return &Import{Run: run, Events: evs, Analysis: a}, nil
}

// Result describes the import into namespace.
func (im *Import) Result(namespace string) *ImportResult {
	r := im.Analysis.Run
	return &ImportResult{Run: im.Run, Namespace: namespace, Events: len(im.Events), Tasks: len(r.Tasks),
		Status: string(r.Status), Problems: len(im.Analysis.Problems), Unfinished: !r.Status.Terminal()}
}

// Hashes are the live hashes of a run, field → value.
type Hashes struct {
	State, DAG, Results, Channel map[string]string
}

// Hashes returns the live hashes the engine would hold for the imported
// run whose log ends at last: task records as projector.RecordOf,
// @status, @workflow, @cursor = last, @ok (the succeeded tasks), the
// spawn records, @spawned and @tasks, the
// result expiries, the signal ids;
// accepted results and @input; the metadata of every submitted and
// spawned task; the channel as written.
func (im *Import) Hashes(last string) (Hashes, error) {
	r := im.Analysis.Run
	h := Hashes{
		State:   map[string]string{statehash.FieldRunStatus: string(r.Status), statehash.FieldRunWorkflow: r.Workflow, statehash.FieldRunCursor: last},
		Results: map[string]string{statehash.FieldRunInput: string(r.Input)},
		DAG:     map[string]string{},
		Channel: map[string]string{},
	}
	succeeded := 0
	for _, t := range r.Tasks {
		// No field means pending (the engine never writes a pending
		// record, except for a requeued task, which keeps its attempt).
		if rec := projector.RecordOf(t); rec != (statehash.Record{Status: projector.TaskPending}) {
			h.State[t.Spec.ID] = rec.String()
		}
		if t.Status == projector.TaskSucceeded {
			succeeded++
			h.Results[t.Spec.ID] = string(t.Result)
			if t.ResultExpiresMS > 0 {
				// The import enters it in the expiry set: a result past
				// its TTL is deleted by the projector at once.
				h.State[statehash.ResultExpiryField(t.Spec.ID)] = strconv.FormatInt(t.ResultExpiresMS, 10)
			}
		}
	}
	if succeeded > 0 {
		h.State[statehash.FieldRunSucceeded] = strconv.Itoa(succeeded)
	}
	for k, v := range im.Analysis.spawnFields() {
		h.State[k] = v
	}
	// @tasks: the tasks at submit (the spawned ones are @spawned).
	spawned, _ := strconv.Atoi(h.State[statehash.FieldRunSpawned])
	h.State[statehash.FieldRunTasks] = strconv.Itoa(len(im.Analysis.Specs()) - spawned)
	for k, v := range im.Analysis.signalFields() {
		h.State[k] = v
	}
	for _, s := range im.Analysis.Specs() {
		m, err := json.Marshal(statehash.MetaOf(s))
		if err != nil {
			return h, fmt.Errorf("%w: task %s metadata: %w", ErrInvalidExport, s.ID, err)
		}
		h.DAG[s.ID] = string(m)
	}
	for _, e := range im.Events {
		if e.Type == events.ChannelWritten {
			var b events.ChannelWrittenBody
			if e.DecodeBody(&b) == nil && b.Key != "" {
				h.Channel[b.Key] = string(b.Value)
			}
		}
	}
	return h, nil
}
