package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/graflow-go/graflow/scheduler"
	"github.com/graflow-go/graflow/scheduler/specschema"
	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"
)

func init() {
	register(&command{name: "validate", summary: "check workflow spec files (JSON or YAML) without submitting: each problem with file, line and task; exit 2 if any",
		long: `graflow validate FILE... (- for standard input)

Checks each spec file against the spec schema (scheduler/specschema/
spec.schema.json: fields, types, ranges, ids, durations) and the rules
submit applies (dependencies that exist, no cycle, sizes), and prints every
problem as FILE:LINE: task ID: message. Nothing connects to Redis.`,
		setup: runValidate})
}

func runValidate(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	fs.BoolVar(&c.json, "json", false, "print the problems as JSON")
	return func(_ context.Context, args []string) error {
		if len(args) == 0 {
			return usagef("validate takes one or more spec files (- for stdin)")
		}
		var all []specProblem
		for _, file := range args {
			probs, err := validateFile(m, file)
			if err != nil {
				return withCode(ExitUsage, err)
			}
			all = append(all, probs...)
		}
		if c.json {
			if all == nil {
				all = []specProblem{}
			}
			if err := printJSON(m.Stdout, all); err != nil {
				return err
			}
		} else {
			for _, p := range all {
				fmt.Fprintln(m.Stdout, p)
			}
		}
		if len(all) > 0 {
			return withCode(ExitUsage, errors.Join(fmt.Errorf("%d problems", len(all)), errQuiet))
		}
		if !c.json {
			fmt.Fprintf(m.Stdout, "%s: ok\n", strings.Join(args, ", "))
		}
		return nil
	}
}

// specProblem is one problem of a spec file.
type specProblem struct {
	File    string `json:"file"`
	Line    int    `json:"line,omitempty"`
	Task    string `json:"task,omitempty"`
	Message string `json:"message"`
}

func (p specProblem) String() string {
	s := p.File
	if p.Line > 0 {
		s += ":" + strconv.Itoa(p.Line)
	}
	s += ": "
	if p.Task != "" {
		s += "task " + p.Task + ": "
	}
	return s + p.Message
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// validateFile checks one spec file: YAML/JSON syntax, the schema, then
// scheduler.ParseSpec and Validate. Positions come from yaml.v3's nodes
// (JSON is YAML, so one parser gives lines for both).
func validateFile(m *Main, file string) ([]specProblem, error) {
	data, err := readSpecFile(m, file)
	if err != nil {
		return nil, err
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		p := specProblem{File: file, Message: err.Error()}
		if mm := yamlLineRE.FindStringSubmatch(err.Error()); mm != nil {
			p.Line, _ = strconv.Atoi(mm[1])
			p.Message = mm[2]
		}
		return []specProblem{p}, nil
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		doc = doc.Content[0]
	}
	var v any
	if err := doc.Decode(&v); err != nil {
		return []specProblem{{File: file, Line: doc.Line, Message: err.Error()}}, nil
	}
	j, err := json.Marshal(v)
	if err != nil {
		return []specProblem{{File: file, Line: doc.Line, Message: err.Error()}}, nil
	}
	var instance any
	if err := json.Unmarshal(j, &instance); err != nil {
		return nil, err
	}
	schemaProbs, err := specschema.Check(instance)
	if err != nil {
		return nil, err
	}
	var out []specProblem
	for _, sp := range schemaProbs {
		n, task := locate(doc, sp.Path)
		msg := sp.Message
		if len(sp.Path) > 0 {
			msg = strings.Join(sp.Path, ".") + ": " + msg
		}
		out = append(out, specProblem{File: file, Line: n.Line, Task: task, Message: msg})
	}
	if len(out) > 0 {
		return out, nil // the loader's errors would repeat them, without positions
	}
	spec, err := scheduler.ParseSpec(data)
	if err != nil {
		return []specProblem{{File: file, Line: doc.Line, Message: err.Error()}}, nil
	}
	var ve *scheduler.ValidationError
	if err := scheduler.Validate(spec, scheduler.ValidateOptions{}); errors.As(err, &ve) {
		for _, p := range ve.Problems {
			line, task := taskLine(doc, p.Error())
			out = append(out, specProblem{File: file, Line: line, Task: task, Message: p.Error()})
		}
	} else if err != nil {
		out = append(out, specProblem{File: file, Line: doc.Line, Message: err.Error()})
	}
	return out, nil
}

// locate follows a JSON pointer's tokens through the YAML nodes and
// returns the deepest node found and the id of the task it is in.
func locate(n *yaml.Node, path []string) (*yaml.Node, string) {
	task := ""
	for i, tok := range path {
		next := child(n, tok)
		if next == nil {
			break
		}
		if i == 1 && path[0] == "tasks" {
			if id := child(next, "id"); id != nil && id.Kind == yaml.ScalarNode {
				task = id.Value
			}
		}
		n = next
	}
	return n, task
}

// child is n's value under a mapping key or a sequence index.
func child(n *yaml.Node, tok string) *yaml.Node {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == tok {
				return n.Content[i+1]
			}
		}
	case yaml.SequenceNode:
		if i, err := strconv.Atoi(tok); err == nil && i >= 0 && i < len(n.Content) {
			return n.Content[i]
		}
	}
	return nil
}

var quotedRE = regexp.MustCompile(`"((?:[^"\\]|\\.)*)"`)

// taskLine finds the task a Validate problem names (its first quoted id
// that is a task's) and returns the line of that task.
func taskLine(doc *yaml.Node, msg string) (int, string) {
	tasks := child(doc, "tasks")
	if tasks == nil {
		return doc.Line, ""
	}
	for _, mm := range quotedRE.FindAllStringSubmatch(msg, -1) {
		id, err := strconv.Unquote(`"` + mm[1] + `"`)
		if err != nil {
			continue
		}
		for _, t := range tasks.Content {
			if n := child(t, "id"); n != nil && n.Value == id {
				return t.Line, id
			}
		}
	}
	return tasks.Line, ""
}
