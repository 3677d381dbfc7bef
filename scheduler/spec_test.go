package scheduler_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/scheduler"
)

// normJSON compares raw JSON by value, so that a JSON file's spacing and a
// YAML file's re-encoding compare equal.
var normJSON = cmp.Transformer("json", func(r json.RawMessage) any {
	if len(r) == 0 {
		return nil
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(r))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return "invalid JSON: " + string(r)
	}
	return v
})

func parse(t *testing.T, src string) events.RunSubmittedBody {
	t.Helper()
	b, err := scheduler.ParseSpec([]byte(src))
	if err != nil {
		t.Fatalf("ParseSpec: %v\n%s", err, src)
	}
	return b
}

func TestParseSpecJSONAndYAMLAgree(t *testing.T) {
	t.Parallel()
	jsonSrc := `{
  "workflow": "etl",
  "input": {"source": "s3://b/k.csv", "n": [1, 2.5, "x", null, true]},
  "tasks": [
    {"id": "extract", "handler": "etl.extract", "timeout": "1m30s", "retries": 2, "args": {"value": [1, 2]}},
    {"id": "load", "handler": "etl.load", "deps": ["extract"], "pool": "gpu", "priority": 9, "max_attempts": 4}
  ]
}`
	yamlSrc := `
# the same workflow in YAML
workflow: etl
input:
  source: s3://b/k.csv
  n: [1, 2.5, x, null, true]
tasks:
  - id: extract
    handler: etl.extract
    timeout: 1m30s
    retries: 2
    args: {value: [1, 2]}
  - id: load
    handler: etl.load
    deps: [extract]
    pool: gpu
    priority: 9
    max_attempts: 4
`
	want := events.RunSubmittedBody{
		Workflow: "etl",
		Input:    json.RawMessage(`{"source":"s3://b/k.csv","n":[1,2.5,"x",null,true]}`),
		Tasks: []events.TaskSpec{
			{ID: "extract", Handler: "etl.extract", TimeoutMS: 90000, MaxAttempts: 3, Args: json.RawMessage(`{"value":[1,2]}`)},
			{ID: "load", Handler: "etl.load", Deps: []string{"extract"}, Pool: "gpu", Priority: 9, MaxAttempts: 4},
		},
	}
	for name, src := range map[string]string{"JSON": jsonSrc, "YAML": yamlSrc} {
		if diff := cmp.Diff(want, parse(t, src), normJSON); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
	}
}

// The example files of the repository are equivalent, parse and validate.
func TestParseSpecExamples(t *testing.T) {
	t.Parallel()
	read := func(name string) events.RunSubmittedBody {
		t.Helper()
		src, err := os.ReadFile("../examples/" + name)
		if err != nil {
			t.Fatal(err)
		}
		b := parse(t, string(src))
		if err := scheduler.Validate(b, scheduler.ValidateOptions{}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		return b
	}
	if diff := cmp.Diff(read("etl.json"), read("etl.yaml"), normJSON); diff != "" {
		t.Errorf("etl.json and etl.yaml differ (-json +yaml):\n%s", diff)
	}
	entries, err := os.ReadDir("../examples")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if n := e.Name(); bytes.HasSuffix([]byte(n), []byte(".yaml")) || bytes.HasSuffix([]byte(n), []byte(".json")) {
			read(n)
		}
	}
}

func TestParseSpecOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		task string // the JSON task object
		want events.TaskSpec
	}{
		{"no retries means one attempt (the zero value)", `{"id":"a","handler":"h"}`, events.TaskSpec{ID: "a", Handler: "h"}},
		{"retries 0 is one attempt", `{"id":"a","handler":"h","retries":0}`, events.TaskSpec{ID: "a", Handler: "h", MaxAttempts: 1}},
		{"retries n is n+1 attempts", `{"id":"a","handler":"h","retries":3}`, events.TaskSpec{ID: "a", Handler: "h", MaxAttempts: 4}},
		{"max_attempts as given", `{"id":"a","handler":"h","max_attempts":2}`, events.TaskSpec{ID: "a", Handler: "h", MaxAttempts: 2}},
		{"a timeout in seconds", `{"id":"a","handler":"h","timeout":"30s"}`, events.TaskSpec{ID: "a", Handler: "h", TimeoutMS: 30000}},
		{"a timeout in milliseconds", `{"id":"a","handler":"h","timeout":"250ms"}`, events.TaskSpec{ID: "a", Handler: "h", TimeoutMS: 250}},
		{"a compound timeout", `{"id":"a","handler":"h","timeout":"1h2m3s"}`, events.TaskSpec{ID: "a", Handler: "h", TimeoutMS: 3723000}},
		{"null args are no args", `{"id":"a","handler":"h","args":null}`, events.TaskSpec{ID: "a", Handler: "h"}},
		{"args are kept as JSON", `{"id":"a","handler":"h","args":{"big":12345678901234567890}}`,
			events.TaskSpec{ID: "a", Handler: "h", Args: json.RawMessage(`{"big":12345678901234567890}`)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := parse(t, `{"workflow":"w","tasks":[`+tt.task+`]}`)
			if len(b.Tasks) != 1 {
				t.Fatalf("%d tasks", len(b.Tasks))
			}
			if diff := cmp.Diff(tt.want, b.Tasks[0], normJSON); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	if b := parse(t, `{"workflow":"w","input":null,"tasks":[]}`); b.Input != nil {
		t.Errorf("null input = %q, want none", b.Input)
	}
	// JSON input keeps exact numbers.
	if b := parse(t, `{"workflow":"w","input":{"id":12345678901234567890},"tasks":[]}`); string(b.Input) != `{"id":12345678901234567890}` {
		t.Errorf("input = %s", b.Input)
	}
}

func TestParseSpecRejects(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"an unknown top-level JSON field":  `{"workflow":"w","taks":[]}`,
		"an unknown task JSON field":       `{"workflow":"w","tasks":[{"id":"a","handler":"h","dep":["b"]}]}`,
		"an unknown top-level YAML field":  "workflow: w\nversion: 2\ntasks: []\n",
		"an unknown task YAML field":       "workflow: w\ntasks:\n  - id: a\n    handler: h\n    retry: 2\n",
		"both retries and max_attempts":    `{"workflow":"w","tasks":[{"id":"a","handler":"h","retries":1,"max_attempts":2}]}`,
		"a timeout without a unit":         `{"workflow":"w","tasks":[{"id":"a","handler":"h","timeout":"30"}]}`,
		"a timeout that is not a duration": `{"workflow":"w","tasks":[{"id":"a","handler":"h","timeout":"soon"}]}`,
		"a timeout given as a number":      `{"workflow":"w","tasks":[{"id":"a","handler":"h","timeout":30}]}`,
		"retries as a string":              `{"workflow":"w","tasks":[{"id":"a","handler":"h","retries":"2"}]}`,
		"truncated JSON":                   `{"workflow":"w","tasks":[`,
		"JSON followed by a second value":  `{"workflow":"w","tasks":[]} {"workflow":"x"}`,
		"YAML that does not parse":         "workflow: w\ntasks: [\n",
		"a YAML list instead of a mapping": "- id: a\n  handler: h\n",
		"YAML args with a non-string key":  "workflow: w\ntasks:\n  - id: a\n    handler: h\n    args: {1: one}\n",
		"an empty file":                    "",
		"only whitespace":                  " \n\t",
	}
	for name, src := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b, err := scheduler.ParseSpec([]byte(src))
			if !errors.Is(err, scheduler.ErrInvalidSpec) {
				t.Errorf("ParseSpec = %+v, %v; want ErrInvalidSpec", b, err)
			}
		})
	}
}
