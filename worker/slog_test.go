package worker_test

import (
	"context"
	"log/slog"
	"testing"

	"github.com/graflow-go/graflow/worker"
)

// recorder is a slog.Handler keeping the records' messages and workers.
type recorder struct {
	msgs chan string
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	msg := rec.Message
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == "worker" {
			msg += " worker=" + a.Value.String()
		}
		return true
	})
	select {
	case r.msgs <- msg:
	default:
	}
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

// Config.Slog receives the worker's logs when Logger is nil.
func TestWorkerLogsToSlog(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rec := &recorder{msgs: make(chan string, 64)}
	cfg := b.config("slogged")
	cfg.Slog = slog.New(rec)
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(b.ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	for {
		select {
		case msg := <-rec.msgs:
			if msg == "worker started worker=slogged" {
				return
			}
		case <-b.ctx.Done():
			t.Fatal("no \"worker started\" record with worker=slogged")
		}
	}
}
