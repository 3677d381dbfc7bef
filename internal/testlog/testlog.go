package testlog

import (
	"strings"
	"sync"
)

// LineSignal is an io.Writer (a logger's output) whose Seen is closed at
// the first write holding Text.
type LineSignal struct {
	Text string
	Seen chan struct{}
	once sync.Once
}

// NewLineSignal returns a LineSignal for text.
func NewLineSignal(text string) *LineSignal {
	return &LineSignal{Text: text, Seen: make(chan struct{})}
}

func (l *LineSignal) Write(p []byte) (int, error) {
	if strings.Contains(string(p), l.Text) {
		l.once.Do(func() { close(l.Seen) })
	}
	return len(p), nil
}
