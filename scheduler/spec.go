package scheduler

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/graflow-go/graflow/events"
	"gopkg.in/yaml.v3"
)

// ErrInvalidSpec is returned by ParseSpec for a file that does not parse.
var ErrInvalidSpec = errors.New("invalid workflow spec")

// SpecFile is the JSON/YAML form of a workflow, for producers in any
// language (docs/workflows.md).
type SpecFile struct {
	Workflow string          `json:"workflow"`
	Input    json.RawMessage `json:"input,omitempty"`
	Tasks    []SpecTask      `json:"tasks"`
}

// SpecTask is one task of a SpecFile.
type SpecTask struct {
	ID          string          `json:"id"`
	Handler     string          `json:"handler"`
	Deps        []string        `json:"deps,omitempty"`
	Pool        string          `json:"pool,omitempty"`
	Priority    int             `json:"priority,omitempty"`
	MaxAttempts int             `json:"max_attempts,omitempty"`
	Retries     *int            `json:"retries,omitempty"`
	Timeout     string          `json:"timeout,omitempty"`
	Args        json.RawMessage `json:"args,omitempty"`
	// Join: {policy: all|best_effort|at_least|critical, n: N, critical: [ids]}.
	Join *events.Join `json:"join,omitempty"`
	// StartAfter delays the dispatch after the task is ready (a duration).
	StartAfter string `json:"start_after,omitempty"`
	// ResultTTL expires the stored result after the task succeeded (a
	// duration); the log keeps it.
	ResultTTL string `json:"result_ttl,omitempty"`
}

// ParseSpec parses a workflow spec in JSON or YAML (JSON is YAML, but JSON
// input is parsed strictly as JSON for exact numbers). Unknown fields are
// errors, so a typo does not silently drop an option. The result still
// needs Validate (Submit does it).
func ParseSpec(data []byte) (events.RunSubmittedBody, error) {
	var out events.RunSubmittedBody
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) > 0 && trimmed[0] != '{' {
		var doc any
		if err := yaml.Unmarshal(data, &doc); err != nil {
			return out, fmt.Errorf("%w: %w", ErrInvalidSpec, err)
		}
		j, err := json.Marshal(doc)
		if err != nil {
			return out, fmt.Errorf("%w: %w", ErrInvalidSpec, err)
		}
		trimmed = j
	}
	var f SpecFile
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return out, fmt.Errorf("%w: %w", ErrInvalidSpec, err)
	}
	if dec.More() {
		return out, fmt.Errorf("%w: more than one JSON value in the file", ErrInvalidSpec)
	}
	out.Workflow, out.Input = f.Workflow, f.Input
	if string(out.Input) == "null" {
		out.Input = nil
	}
	for _, t := range f.Tasks {
		ts := events.TaskSpec{ID: t.ID, Handler: t.Handler, Deps: t.Deps, Pool: t.Pool, Priority: t.Priority, MaxAttempts: t.MaxAttempts, Args: t.Args, Join: t.Join}
		if string(ts.Args) == "null" {
			ts.Args = nil
		}
		if t.Retries != nil {
			if t.MaxAttempts != 0 {
				return out, fmt.Errorf("%w: task %q sets both retries and max_attempts", ErrInvalidSpec, t.ID)
			}
			ts.MaxAttempts = *t.Retries + 1
		}
		for _, d := range []struct {
			name, val string
			ms        *int64
		}{{"start_after", t.StartAfter, &ts.StartAfterMS}, {"timeout", t.Timeout, &ts.TimeoutMS}, {"result_ttl", t.ResultTTL, &ts.ResultTTLMS}} {
			if d.val == "" {
				continue
			}
			v, err := time.ParseDuration(d.val)
			if err != nil {
				return out, fmt.Errorf("%w: task %q: %s %q: use a duration like 30s or 5m", ErrInvalidSpec, t.ID, d.name, d.val)
			}
			*d.ms = v.Milliseconds()
		}
		out.Tasks = append(out.Tasks, ts)
	}
	return out, nil
}
