package projector

func (p *Projector) forget(run string) {
	p.mu.Lock()
	delete(p.cache, run)
	p.mu.Unlock()
}

// cachedRuns reports how many runs' folds the projector keeps.
func (p *Projector) cachedRuns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.cache)
}

func (p *Projector) entry(run string) *cached {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.cache[run]
	if c == nil {
		if len(p.cache) >= p.cfg.CacheSize {
			for k := range p.cache { // evict an arbitrary run
				delete(p.cache, k)
				break
			}
		}
		c = &cached{}
		p.cache[run] = c
	}
	return c
}
