package ui

import (
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow"
)

func TestLayoutDAG(t *testing.T) {
	t.Parallel()
	task := func(id string, deps ...string) graflow.TaskInfo {
		return graflow.TaskInfo{ID: id, Handler: "h", Deps: deps, Status: "pending"}
	}
	// place is a node's layer and row, "id@layer.row".
	type place = string
	tests := []struct {
		name  string
		tasks []graflow.TaskInfo
		want  []place // in layer, then row order
		edges int
	}{
		{"a chain is one row", []graflow.TaskInfo{task("a"), task("b", "a"), task("c", "b")}, []place{"a@0.0", "b@1.0", "c@2.0"}, 2},
		{"a diamond has the branches in one layer", []graflow.TaskInfo{task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c")},
			[]place{"a@0.0", "b@1.0", "c@1.1", "d@2.0"}, 4},
		{"a task's layer is its longest chain", []graflow.TaskInfo{task("a"), task("b", "a"), task("c", "a", "b")},
			[]place{"a@0.0", "b@1.0", "c@2.0"}, 3},
		{"tasks listed before their dependencies", []graflow.TaskInfo{task("z", "y"), task("y", "x"), task("x")},
			[]place{"x@0.0", "y@1.0", "z@2.0"}, 2},
		{"rows follow the dependencies' rows", []graflow.TaskInfo{task("r1"), task("r2"), task("after2", "r2"), task("after1", "r1")},
			[]place{"r1@0.0", "r2@0.1", "after1@1.0", "after2@1.1"}, 2},
		{"an unknown dependency is ignored", []graflow.TaskInfo{task("a", "ghost")}, []place{"a@0.0"}, 0},
		{"a cycle is broken, not looped on", []graflow.TaskInfo{task("a", "b"), task("b", "a")}, []place{"b@0.0", "a@1.0"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			v := layoutDAG("run", tt.tasks)
			var got []place
			for _, n := range v.Nodes {
				got = append(got, n.ID+"@"+strconv.Itoa(n.Layer)+"."+strconv.Itoa(n.Row))
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("places (-want +got):\n%s", diff)
			}
			if len(v.Edges) != tt.edges {
				t.Errorf("%d edges, want %d: %+v", len(v.Edges), tt.edges, v.Edges)
			}
			for _, n := range v.Nodes {
				if n.X < 0 || n.Y < 0 || n.X+nodeW > v.Width || n.Y+nodeH > v.Height {
					t.Errorf("node %s at (%d,%d) outside the %dx%d drawing", n.ID, n.X, n.Y, v.Width, v.Height)
				}
			}
		})
	}

	t.Run("a run too large to draw is listed only", func(t *testing.T) {
		t.Parallel()
		tasks := make([]graflow.TaskInfo, maxDrawn+1)
		for i := range tasks {
			tasks[i] = task("t" + strconv.Itoa(i))
		}
		if v := layoutDAG("run", tasks); !v.TooLarge || len(v.Nodes) != 0 || v.Count != maxDrawn+1 {
			t.Errorf("layout of %d tasks: TooLarge %v, %d nodes; want TooLarge and none", len(tasks), v.TooLarge, len(v.Nodes))
		}
	})
	t.Run("a wait on a spawned task is a dashed edge", func(t *testing.T) {
		t.Parallel()
		sum := task("sum", "split")
		sum.Waits = []string{"split-0", "split-1", "split"} // split is a dependency already: one edge
		v := layoutDAG("run", []graflow.TaskInfo{task("split"), sum, task("split-0", "split"), task("split-1", "split")})
		var got []string
		for _, e := range v.Edges {
			got = append(got, e.From+">"+e.To+map[bool]string{true: " wait"}[e.Wait])
		}
		want := []string{"split>sum", "split-0>sum wait", "split-1>sum wait", "split>split-0", "split>split-1"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("edges (-want +got):\n%s", diff)
		}
		for _, n := range v.Nodes {
			if n.ID == "sum" && n.Layer != 2 {
				t.Errorf("sum is in layer %d, want 2 (after what split spawned)", n.Layer)
			}
		}
	})
	t.Run("a long id is shortened on its node", func(t *testing.T) {
		t.Parallel()
		id := strings.Repeat("x", 40)
		if got := layoutDAG("run", []graflow.TaskInfo{task(id)}).Nodes[0].Label; len([]rune(got)) != labelMx || !strings.HasSuffix(got, "…") {
			t.Errorf("label %q, want %d runes ending in …", got, labelMx)
		}
	})
}
