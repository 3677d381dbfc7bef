package graflow

import (
	"context"
	"encoding/json"
)

// Channel returns run's channel: every key its tasks wrote (worker
// Task.Channel) with its JSON value, as last written. The values stay
// after the run ends, until the run expires (the projectors' RunTTL) or
// GC collects it. Every write is a channel_written event in the run's log
// (Log, Export, "graflow replay"). ErrRunNotFound for a run with no log.
func (c *Client) Channel(ctx context.Context, run string) (map[string]json.RawMessage, error) {
	h, err := c.db.Channel(ctx, run)
	if err != nil {
		return nil, err
	}
	if len(h) == 0 {
		if err := c.exists(ctx, run); err != nil {
			return nil, err
		}
	}
	out := make(map[string]json.RawMessage, len(h))
	for k, v := range h {
		out[k] = json.RawMessage(v)
	}
	return out, nil
}

// ChannelGet returns the JSON value of key in run's channel, and whether
// the key has one (see Channel). ErrRunNotFound for a run with no log.
func (c *Client) ChannelGet(ctx context.Context, run, key string) (json.RawMessage, bool, error) {
	v, ok, err := c.db.ChannelGet(ctx, run, key)
	if err != nil {
		return nil, false, err
	}
	if !ok {
		return nil, false, c.exists(ctx, run)
	}
	return json.RawMessage(v), true, nil
}

// exists returns ErrRunNotFound when run has no log.
func (c *Client) exists(ctx context.Context, run string) error {
	ok, err := c.db.LogExists(ctx, run)
	if err != nil {
		return err
	}
	if !ok {
		return c.notFound(run)
	}
	return nil
}
