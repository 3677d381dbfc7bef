package worker

// WithClaimUpstreamBytes sets the byte budget of a claim's upstream
// results (tests of wide fan-ins).
func WithClaimUpstreamBytes(cfg Config, n int) Config {
	cfg.claimUpstreamBytes = n
	return cfg
}

// WithSlotWait sets a hook called when a message read by a fetch loop
// waits for a slot, with its task and whether its read claimed it.
func WithSlotWait(cfg Config, f func(task string, claimed bool)) Config {
	cfg.slotWait = f
	return cfg
}
