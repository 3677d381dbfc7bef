package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/lmittmann/tint"
)

// Log formats (--log-format).
const (
	logJSON    = "json"
	logConsole = "console"
)

// parseLevel reads --log-level.
func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
}

// slog returns the command's logger on w: JSON lines (the default when w is
// not a terminal, so a log shipper gets one object per line) or console
// text (key=value), times in RFC 3339 with milliseconds and durations with
// their unit ("1.5s", where slog's JSON would print nanoseconds).
func (c *common) slog(w io.Writer) *slog.Logger {
	lvl, _ := parseLevel(c.logLevel) // checked by check()
	opts := &slog.HandlerOptions{Level: lvl, ReplaceAttr: replaceAttr}
	format := c.logFormat
	if format == "" {
		format = logJSON
		if isTerminal(w) {
			format = logConsole
		}
	}
	if format == logConsole {
		// tint: the short level and bare message of a console logger
		// (zerolog's ConsoleWriter before), key=value attributes.
		return slog.New(tint.NewTextHandler(w, &tint.Options{Level: lvl, ReplaceAttr: replaceAttr, TimeFormat: timeFormat, NoColor: !isTerminal(w)}))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// timeFormat is RFC 3339 with milliseconds, in UTC.
const timeFormat = "2006-01-02T15:04:05.000Z07:00"

func replaceAttr(_ []string, a slog.Attr) slog.Attr {
	switch a.Value.Kind() {
	case slog.KindTime:
		return slog.String(a.Key, a.Value.Time().UTC().Format(timeFormat))
	case slog.KindDuration:
		return slog.String(a.Key, a.Value.Duration().String())
	}
	return a
}
