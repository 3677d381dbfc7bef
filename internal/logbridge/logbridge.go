// Package logbridge lets the library log to a *slog.Logger.
//
// The engine logs with zerolog (its hot paths build events without
// allocating, and every package already does); a user who gives a
// *slog.Logger in a Config (the Slog fields of worker.Config,
// projector.Config, scheduler.CronConfig and graflow.ScheduleRunOptions)
// gets a zerolog.Logger from Zerolog whose events are decoded and handed to
// the slog.Handler as records: the message, the level and each field in
// order, with the handler's own time, format and level filter. Rewriting the
// engine onto slog would touch every log line for no gain to users; the
// bridge costs one JSON decode per line logged, and the engine logs per
// event only at debug level.
package logbridge

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/rs/zerolog"
)

// Zerolog returns a zerolog.Logger writing to l. Its level is the lowest
// l's handler enables (so events l would drop are not built). A nil l
// gives nil.
func Zerolog(l *slog.Logger) *zerolog.Logger {
	if l == nil {
		return nil
	}
	h := l.Handler()
	lvl := zerolog.ErrorLevel
	for _, c := range []struct {
		s slog.Level
		z zerolog.Level
	}{{slog.LevelError, zerolog.ErrorLevel}, {slog.LevelWarn, zerolog.WarnLevel}, {slog.LevelInfo, zerolog.InfoLevel}, {slog.LevelDebug, zerolog.DebugLevel}} {
		if h.Enabled(context.Background(), c.s) {
			lvl = c.z
		}
	}
	z := zerolog.New(writer{h: h}).Level(lvl)
	return &z
}

// writer is a zerolog.LevelWriter that hands each event to a slog.Handler.
type writer struct{ h slog.Handler }

func (w writer) Write(p []byte) (int, error) { return w.WriteLevel(zerolog.NoLevel, p) }

// WriteLevel decodes one zerolog event (a JSON object) into a record.
func (w writer) WriteLevel(level zerolog.Level, p []byte) (int, error) {
	lvl := slogLevel(level)
	if !w.h.Enabled(context.Background(), lvl) {
		return len(p), nil
	}
	dec := json.NewDecoder(bytes.NewReader(p))
	dec.UseNumber()
	var msg string
	var attrs []slog.Attr
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return len(p), nil // not an object: nothing zerolog writes
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			break
		}
		key, _ := t.(string)
		var v any
		if err := dec.Decode(&v); err != nil {
			break
		}
		switch key {
		case zerolog.MessageFieldName:
			msg, _ = v.(string)
		case zerolog.LevelFieldName, zerolog.TimestampFieldName:
		default:
			attrs = append(attrs, attr(key, v))
		}
	}
	r := slog.NewRecord(time.Now(), lvl, msg, 0)
	r.AddAttrs(attrs...)
	return len(p), w.h.Handle(context.Background(), r)
}

func attr(key string, v any) slog.Attr {
	switch v := v.(type) {
	case json.Number:
		if n, err := v.Int64(); err == nil {
			return slog.Int64(key, n)
		}
		f, _ := v.Float64()
		return slog.Float64(key, f)
	case map[string]any:
		as := make([]any, 0, len(v))
		for _, k := range slices.Sorted(maps.Keys(v)) {
			as = append(as, attr(k, v[k]))
		}
		return slog.Group(key, as...)
	}
	return slog.Any(key, v)
}

func slogLevel(l zerolog.Level) slog.Level {
	switch l {
	case zerolog.TraceLevel:
		return slog.LevelDebug - 4
	case zerolog.DebugLevel:
		return slog.LevelDebug
	case zerolog.WarnLevel:
		return slog.LevelWarn
	case zerolog.ErrorLevel:
		return slog.LevelError
	case zerolog.FatalLevel, zerolog.PanicLevel:
		return slog.LevelError + 4
	}
	return slog.LevelInfo
}
