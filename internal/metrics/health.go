package metrics

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
)

// Health answers /healthz (the process serves HTTP) and /readyz (Redis
// answers PING, and every loop that reported itself alive did so within
// the time it promised). Safe for concurrent use.
type Health struct {
	db  rdb.DB
	now func() time.Time

	mu    sync.Mutex
	loops map[string]loopBeat
}

type loopBeat struct {
	at     time.Time
	within time.Duration
}

// PingTimeout bounds the PING of a readiness check.
const PingTimeout = time.Second

func newHealth(db rdb.DB, now func() time.Time) *Health {
	return &Health{db: db, now: now, loops: map[string]loopBeat{}}
}

// Alive records that loop went round and will again within the given
// time.
func (h *Health) Alive(loop string, within time.Duration) {
	now := h.now()
	h.mu.Lock()
	h.loops[loop] = loopBeat{at: now, within: within}
	h.mu.Unlock()
}

// Ready returns nil when Redis answers PING and every loop is alive, or
// an error that says what is wrong. A process none of whose loops has
// reported yet is not ready.
func (h *Health) Ready(ctx context.Context) error {
	var problems []string
	pctx, cancel := context.WithTimeout(ctx, PingTimeout)
	defer cancel()
	if err := h.db.Ping(pctx); err != nil {
		problems = append(problems, fmt.Sprintf("redis: PING failed: %v", err))
	}
	now := h.now()
	h.mu.Lock()
	if len(h.loops) == 0 {
		problems = append(problems, "loops: not started yet")
	}
	var stale []string
	for name, b := range h.loops {
		if age := now.Sub(b.at); age > b.within {
			stale = append(stale, fmt.Sprintf("loop %s: silent for %s (expected within %s)", name, age.Round(time.Millisecond), b.within))
		}
	}
	h.mu.Unlock()
	sort.Strings(stale)
	problems = append(problems, stale...)
	if len(problems) > 0 {
		return fmt.Errorf("not ready: %s", strings.Join(problems, "; "))
	}
	return nil
}

// ServeLive is /healthz: 200 while the process serves HTTP.
func (h *Health) ServeLive(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

// ServeReady is /readyz: 200 "ready", or 503 with the reasons.
func (h *Health) ServeReady(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := h.Ready(r.Context()); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, err.Error())
		return
	}
	fmt.Fprintln(w, "ready")
}
