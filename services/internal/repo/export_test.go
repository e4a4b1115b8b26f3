package repo

// WithChangeLogBound bounds p's change log at n users, so that a test
// reaches the trim with a few.
func WithChangeLogBound(p *Presence, n int) *Presence {
	p.maxChanges = n
	return p
}
