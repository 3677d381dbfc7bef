package worker

// WithClaimUpstreamBytes sets the byte budget of a claim's upstream
// results (tests of wide fan-ins).
func WithClaimUpstreamBytes(cfg Config, n int) Config {
	cfg.claimUpstreamBytes = n
	return cfg
}
