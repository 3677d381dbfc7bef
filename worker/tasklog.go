package worker

import "github.com/rs/zerolog"

// taskLog is an attempt's logger (run, task and attempt; epoch and handler
// once claimed), built on its first use: most attempts log nothing at the
// default level, and each zerolog With copies a context buffer (two per
// attempt, over a kilobyte, when it was built up front).
type taskLog struct {
	base      *zerolog.Logger
	run, task string
	attempt   int
	claimed   bool
	epoch     int64
	handler   string
	built     *zerolog.Logger
}

func newTaskLog(base *zerolog.Logger, m message) *taskLog {
	return &taskLog{base: base, run: m.run, task: m.task, attempt: m.attempt}
}

// L returns the logger, building it on the first call.
func (t *taskLog) L() *zerolog.Logger {
	if t.built == nil {
		c := t.base.With().Str("run", t.run).Str("task", t.task).Int("attempt", t.attempt)
		if t.claimed {
			c = c.Int64("epoch", t.epoch).Str("handler", t.handler)
		}
		l := c.Logger()
		t.built = &l
	}
	return t.built
}

// claim adds the claim's epoch and the handler to what the logger says.
func (t *taskLog) claim(epoch int64, handler string) {
	t.claimed, t.epoch, t.handler, t.built = true, epoch, handler, nil
}

// enabled says whether the logger writes events of level l; the logger is
// not built for those it drops (a success logs at debug level).
func (t *taskLog) enabled(l zerolog.Level) bool {
	return l >= t.base.GetLevel() && l >= zerolog.GlobalLevel()
}

func (t *taskLog) event(l zerolog.Level) *zerolog.Event {
	if !t.enabled(l) {
		return nil // zerolog's events are no-ops on a nil receiver
	}
	return t.L().WithLevel(l)
}

// Debug, Info, Warn and Error start an event of their level, as
// zerolog.Logger's do.
func (t *taskLog) Debug() *zerolog.Event { return t.event(zerolog.DebugLevel) }
func (t *taskLog) Info() *zerolog.Event  { return t.event(zerolog.InfoLevel) }
func (t *taskLog) Warn() *zerolog.Event  { return t.event(zerolog.WarnLevel) }
func (t *taskLog) Error() *zerolog.Event { return t.event(zerolog.ErrorLevel) }
