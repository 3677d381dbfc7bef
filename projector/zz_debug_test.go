package projector_test

import (
	"fmt"
	"testing"

	"github.com/graflow-go/graflow/projector"
)

func TestZZDebug(t *testing.T) {
	defer func() {
		recover()
	}()
	s := newSim(t, 116)
	defer func() {
		for _, e := range s.log {
			fmt.Println(e.Seq, e.Type, e.Task, e.Attempt, e.Epoch, e.Worker, string(e.Body))
		}
		r := fold(t, s.run, s.log)
		for _, task := range r.Tasks {
			fmt.Println(task.Spec.ID, task.Spec.Deps, task.Status, task.Attempt)
		}
		fmt.Println(r.Status, r.Open(), projector.Decide(r, 0, nil))
	}()
	history(t, 116)
}
