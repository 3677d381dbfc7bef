package scheduler

import (
	"testing"

	"github.com/graflow-go/graflow/events"
	"github.com/redis/go-redis/v9"
)

// BenchmarkPrepare measures a submit's Go work before Redis (validation,
// run_submitted, the initial plan, the script's arguments) for the
// bench's single-task run and 3-step chain.
func BenchmarkPrepare(b *testing.B) {
	s, err := New(Config{Redis: redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})})
	if err != nil {
		b.Fatal(err)
	}
	for name, spec := range map[string]events.RunSubmittedBody{
		"single": {Workflow: "single", Tasks: []events.TaskSpec{{ID: "t", Handler: "noop"}}},
		"chain3": {Workflow: "chain", Tasks: []events.TaskSpec{
			{ID: "a", Handler: "noop"}, {ID: "b", Handler: "noop", Deps: []string{"a"}}, {ID: "c", Handler: "noop", Deps: []string{"b"}}}},
	} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := s.prepare(spec, SubmitOptions{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
