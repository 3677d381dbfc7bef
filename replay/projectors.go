package replay

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// ProjectorInfo is a projector's registry entry.
type ProjectorInfo struct {
	ID   string `json:"id"`
	Host string `json:"host,omitempty"`
	PID  int    `json:"pid,omitempty"`
	// Partitions are the feed partitions it consumes.
	Partitions []string  `json:"partitions"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	UptimeMS   int64     `json:"uptime_ms"`
	// LastHeartbeat and HeartbeatAgeMS: when it last refreshed its entry,
	// and how long ago.
	LastHeartbeat  time.Time `json:"last_heartbeat,omitzero"`
	HeartbeatAgeMS int64     `json:"heartbeat_age_ms"`
	// Expired: in the set, but its hash expired (it died without
	// deregistering; the next prune removes it).
	Expired bool `json:"expired,omitempty"`
}

// Projectors lists the projectors of the registry, sorted by id. None
// live means no run makes progress. Safe for concurrent use.
func (c *Client) Projectors(ctx context.Context) ([]ProjectorInfo, error) {
	ids, hs, err := c.db.ProjectorRegistry().Records(ctx, c.cfg.Redis)
	if err != nil {
		return nil, fmt.Errorf("read projector registry: %w", err)
	}
	now := c.cfg.Now()
	out := make([]ProjectorInfo, 0, len(ids))
	for i, id := range ids {
		h := hs[i]
		p := ProjectorInfo{ID: id, Partitions: []string{}}
		if len(h) == 0 {
			p.Expired = true
			out = append(out, p)
			continue
		}
		num := func(k string) int64 { n, _ := strconv.ParseInt(h[k], 10, 64); return n }
		p.Host, p.PID, p.Partitions = h["host"], int(num("pid")), splitComma(h["partitions"])
		if ms := num("started_at"); ms > 0 {
			p.StartedAt = msTime(ms)
			p.UptimeMS = now.Sub(p.StartedAt).Milliseconds()
		}
		if ms := num("last_heartbeat"); ms > 0 {
			p.LastHeartbeat = msTime(ms)
			p.HeartbeatAgeMS = now.Sub(p.LastHeartbeat).Milliseconds()
		}
		out = append(out, p)
	}
	return out, nil
}
