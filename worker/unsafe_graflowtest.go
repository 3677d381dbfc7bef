//go:build graflowtest

package worker

// UnsafeNoFencing returns cfg with the epoch check on results switched
// off: a worker that lost its claim can then still record its outcome.
// TEST-ONLY, and only in binaries built with the graflowtest tag: the chaos
// suite proves with it that its checker catches duplicate accepts.
func UnsafeNoFencing(cfg Config) Config {
	cfg.noFencing = true
	return cfg
}
