// Package specschema holds the JSON Schema of workflow spec files
// (scheduler.SpecFile, in JSON or YAML) and checks documents against it
// with santhosh-tekuri/jsonschema (draft 2020-12). Editors can use the
// file directly: spec.schema.json beside this file.
//
// The schema checks the shape (fields, types, ranges, id and duration
// syntax); scheduler.Validate checks what a schema cannot (dependencies
// that exist, cycles, sizes).
package specschema

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

var printer = message.NewPrinter(language.English)

// JSON is the schema.
//
//go:embed spec.schema.json
var JSON []byte

// URL is the schema's $id.
const URL = "https://github.com/graflow-go/graflow/scheduler/specschema/spec.schema.json"

var compiled = sync.OnceValues(func() (*jsonschema.Schema, error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(JSON))
	if err != nil {
		return nil, err
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(URL, doc); err != nil {
		return nil, err
	}
	return c.Compile(URL)
})

// Problem is one place where a document breaks the schema.
type Problem struct {
	// Path is the JSON pointer's tokens of the offending value
	// (["tasks", "2", "timeout"]).
	Path []string
	// Message says what is wrong.
	Message string
}

// Check validates doc (a JSON document decoded by encoding/json with
// UseNumber, or by jsonschema.UnmarshalJSON) and returns every problem,
// deepest first. It returns an error only if the schema does not compile.
func Check(doc any) ([]Problem, error) {
	s, err := compiled()
	if err != nil {
		return nil, fmt.Errorf("specschema: %w", err)
	}
	err = s.Validate(doc)
	if err == nil {
		return nil, nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return nil, err
	}
	var out []Problem
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) == 0 {
			out = append(out, Problem{Path: e.InstanceLocation, Message: e.ErrorKind.LocalizedString(printer)})
			return
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(ve)
	return out, nil
}
