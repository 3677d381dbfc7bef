package ui

import (
	"fmt"
	"slices"
	"sort"

	"github.com/graflow-go/graflow"
)

// Geometry of the DAG drawing, in SVG user units (pixels).
const (
	nodeW   = 168
	nodeH   = 42
	gapX    = 56
	gapY    = 14
	dagPad  = 10
	labelMx = 20 // runes of a task id shown on its node
	// maxDrawn bounds the tasks drawn; a larger run is listed, not drawn
	// (a 3,000-wide fan-out is no picture).
	maxDrawn = 400
)

// dagNode is one task placed in the drawing.
type dagNode struct {
	ID, Handler, Status, Label string
	Attempt                    int
	Layer, Row                 int
	X, Y                       int
}

// dagEdge is one dependency, drawn From the dependency To the task; Wait
// marks a wait (a task spawned by a dependency, which the task waits for
// too: projector.Task.Waits), drawn dashed.
type dagEdge struct {
	From, To string
	Path     string
	Wait     bool
}

// dagView is a run's DAG laid out left to right in layers: a task's layer
// is the length of the longest dependency chain leading to it.
type dagView struct {
	Run           string
	Width, Height int
	NodeW, NodeH  int
	Nodes         []dagNode
	Edges         []dagEdge
	// TooLarge: more than maxDrawn tasks; nothing is drawn.
	TooLarge bool
	Count    int
}

// layoutDAG lays out tasks (in their submission order), with an edge for
// each dependency and each wait (Waits: tasks spawned at run time that the
// task waits for too). Deps naming no task are ignored, and a cycle (which validation forbids) is broken where
// it is found, so any input gets a drawing. Pure and deterministic.
func layoutDAG(run string, tasks []graflow.TaskInfo) dagView {
	v := dagView{Run: run, Count: len(tasks), NodeW: nodeW, NodeH: nodeH}
	if len(tasks) > maxDrawn {
		v.TooLarge = true
		return v
	}
	index := make(map[string]int, len(tasks))
	for i, t := range tasks {
		if _, dup := index[t.ID]; !dup {
			index[t.ID] = i
		}
	}
	deps := make([][]int, len(tasks))
	waits := map[[2]int]bool{}
	for i, t := range tasks {
		for k, d := range append(t.Deps[:len(t.Deps):len(t.Deps)], t.Waits...) {
			if j, ok := index[d]; ok && j != i && !slices.Contains(deps[i], j) {
				deps[i] = append(deps[i], j)
				if k >= len(t.Deps) {
					waits[[2]int{j, i}] = true
				}
			}
		}
	}

	// Layers: longest path from a root, by depth-first search; an edge back
	// into the search's own path (a cycle) is dropped.
	const unseen, open, done = 0, 1, 2
	state := make([]int, len(tasks))
	layer := make([]int, len(tasks))
	var visit func(i int)
	visit = func(i int) {
		state[i] = open
		kept := deps[i][:0]
		for _, j := range deps[i] {
			if state[j] == unseen {
				visit(j)
			}
			if state[j] == open {
				continue // cycle
			}
			kept = append(kept, j)
			layer[i] = max(layer[i], layer[j]+1)
		}
		deps[i] = kept
		state[i] = done
	}
	layers := 0
	for i := range tasks {
		if state[i] == unseen {
			visit(i)
		}
		layers = max(layers, layer[i]+1)
	}

	// Rows: submission order, then two sweeps that sort each layer by the
	// mean position of its tasks' dependencies (barycentre), which removes
	// most crossings in the shapes workflows have (fan-out, fan-in,
	// diamonds). Positions are centred, as layers are drawn centred.
	byLayer := make([][]int, layers)
	for i := range tasks {
		byLayer[layer[i]] = append(byLayer[layer[i]], i)
	}
	pos := make([]float64, len(tasks))
	place := func(l int) {
		for r, i := range byLayer[l] {
			pos[i] = float64(r) - float64(len(byLayer[l])-1)/2
		}
	}
	for l := range byLayer {
		place(l)
	}
	for range 2 {
		for l := 1; l < layers; l++ {
			key := make(map[int]float64, len(byLayer[l]))
			for _, i := range byLayer[l] {
				key[i] = pos[i]
				if len(deps[i]) > 0 {
					sum := 0.0
					for _, j := range deps[i] {
						sum += pos[j]
					}
					key[i] = sum / float64(len(deps[i]))
				}
			}
			sort.SliceStable(byLayer[l], func(a, b int) bool { return key[byLayer[l][a]] < key[byLayer[l][b]] })
			place(l)
		}
	}

	rows := 0
	for _, ls := range byLayer {
		rows = max(rows, len(ls))
	}
	v.Width = 2*dagPad + layers*nodeW + max(layers-1, 0)*gapX
	v.Height = 2*dagPad + rows*nodeH + max(rows-1, 0)*gapY
	at := make([]int, len(tasks)) // node index of task i
	for l, ls := range byLayer {
		off := (rows - len(ls)) * (nodeH + gapY) / 2
		for r, i := range ls {
			t := tasks[i]
			at[i] = len(v.Nodes)
			v.Nodes = append(v.Nodes, dagNode{
				ID: t.ID, Handler: t.Handler, Status: t.Status, Label: shorten(t.ID, labelMx), Attempt: t.Attempt,
				Layer: l, Row: r, X: dagPad + l*(nodeW+gapX), Y: dagPad + off + r*(nodeH+gapY),
			})
		}
	}
	for i := range tasks {
		to := v.Nodes[at[i]]
		for _, j := range deps[i] {
			from := v.Nodes[at[j]]
			x1, y1 := from.X+nodeW, from.Y+nodeH/2
			x2, y2 := to.X, to.Y+nodeH/2
			mx := (x1 + x2) / 2
			v.Edges = append(v.Edges, dagEdge{From: from.ID, To: to.ID, Wait: waits[[2]int{j, i}],
				Path: fmt.Sprintf("M%d %d C%d %d %d %d %d %d", x1, y1, mx, y1, mx, y2, x2-2, y2)})
		}
	}
	return v
}

// shorten cuts s to n runes, marking the cut.
func shorten(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
