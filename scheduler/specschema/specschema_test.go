package specschema_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/graflow-go/graflow/scheduler"
	"github.com/graflow-go/graflow/scheduler/specschema"
	"gopkg.in/yaml.v3"
)

// decode reads a spec file (YAML or JSON) into the JSON data model.
func decode(t *testing.T, data []byte) any {
	t.Helper()
	var doc any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	j, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(j, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// Every example spec satisfies the schema, and the loader accepts it.
func TestExamplesMatchTheSchema(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("../../examples/*.*")
	if err != nil {
		t.Fatal(err)
	}
	var specs int
	for _, f := range files {
		if ext := filepath.Ext(f); ext != ".yaml" && ext != ".json" {
			continue
		}
		specs++
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := scheduler.ParseSpec(data); err != nil {
			t.Errorf("%s: ParseSpec: %v", f, err)
		}
		probs, err := specschema.Check(decode(t, data))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range probs {
			t.Errorf("%s: /%s: %s", f, strings.Join(p.Path, "/"), p.Message)
		}
	}
	if specs < 5 {
		t.Fatalf("found %d example specs in ../../examples, want them all", specs)
	}
}

func TestTheSchemaRejectsMistakes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ doc, path string }{
		{"tasks: []", "tasks"},
		{"tasks: [{id: a}]", "tasks/0"},
		{"tasks: [{id: a, handler: echo, timout: 5s}]", "tasks/0"},
		{"tasks: [{id: a, handler: echo, timeout: soon}]", "tasks/0/timeout"},
		{"tasks: [{id: a, handler: echo, priority: 12}]", "tasks/0/priority"},
		{"tasks: [{id: 'a b', handler: echo}]", "tasks/0/id"},
		{"tasks: [{id: a, handler: echo, join: {policy: most}}]", "tasks/0/join/policy"},
		{"workflow: w\nextra: 1\ntasks: [{id: a, handler: echo}]", ""},
	} {
		probs, err := specschema.Check(decode(t, []byte(tc.doc)))
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, p := range probs {
			found = found || strings.Join(p.Path, "/") == tc.path
		}
		if !found {
			t.Errorf("%q: problems %+v, want one at /%s", tc.doc, probs, tc.path)
		}
	}
}

// The schema names exactly the fields the loader reads (scheduler.SpecFile
// and SpecTask's JSON names): a field added to the loader and not to the
// schema would make "graflow validate" refuse valid files.
func TestTheSchemaNamesEveryLoaderField(t *testing.T) {
	t.Parallel()
	var schema struct {
		Properties map[string]any `json:"properties"`
		Defs       struct {
			Task struct {
				Properties map[string]any `json:"properties"`
			} `json:"task"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(specschema.JSON, &schema); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what  string
		typ   reflect.Type
		props map[string]any
	}{{"the file", reflect.TypeFor[scheduler.SpecFile](), schema.Properties}, {"a task", reflect.TypeFor[scheduler.SpecTask](), schema.Defs.Task.Properties}} {
		var fields, props []string
		for f := range c.typ.Fields() {
			if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name != "" && name != "-" {
				fields = append(fields, name)
			}
		}
		for p := range c.props {
			props = append(props, p)
		}
		slices.Sort(fields)
		slices.Sort(props)
		if !slices.Equal(fields, props) {
			t.Errorf("%s: the loader reads %v, the schema names %v", c.what, fields, props)
		}
	}
}
