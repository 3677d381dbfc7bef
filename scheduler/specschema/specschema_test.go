package specschema_test

import (
	"encoding/json"
	"os"
	"path/filepath"
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
