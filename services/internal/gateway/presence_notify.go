package gateway

import (
	"context"
	"sync"
	"time"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/clientapi"
)

const (
	// presenceWindow is the least time between two presence frames about one
	// user from this gateway: a flapping connection costs one frame per window.
	presenceWindow = 3 * time.Second
	// maxPresencePending bounds the users waiting for their frame; past it,
	// changes are dropped (presence is best effort, GET /v1/users is the truth).
	maxPresencePending = 20000
)

// presenceNotifier tells a user's contacts when the user comes online (first
// session) or goes offline (last session gone). im-repo reports those
// transitions to the gateway that caused them; the notifier debounces them
// per user, reads the state again when it sends (so the last change always
// goes out, even when an earlier one was held back), and relays the frame
// straight to the contacts' sessions.
type presenceNotifier struct {
	g    *Gateway
	kick chan struct{}

	mu      sync.Mutex
	pending map[string]bool
	sent    map[string]sentPresence
}

type sentPresence struct {
	at     time.Time
	online bool
}

func newPresenceNotifier(g *Gateway) *presenceNotifier {
	return &presenceNotifier{g: g, kick: make(chan struct{}, 1), pending: map[string]bool{}, sent: map[string]sentPresence{}}
}

// changed notes users whose presence may have changed. It never blocks.
func (n *presenceNotifier) changed(userIDs []string) {
	if len(userIDs) == 0 {
		return
	}
	n.mu.Lock()
	for _, u := range userIDs {
		if len(n.pending) >= maxPresencePending {
			break
		}
		n.pending[u] = true
	}
	n.mu.Unlock()
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// run sends due presence frames until ctx ends.
func (n *presenceNotifier) run(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.kick:
		case <-t.C:
		}
		next := n.sendDue(ctx, time.Now())
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(next)
	}
}

// sendDue sends the frames whose window has passed and returns how long until
// the next one is due.
func (n *presenceNotifier) sendDue(ctx context.Context, now time.Time) time.Duration {
	next := time.Hour
	var due []string
	n.mu.Lock()
	for u := range n.pending {
		if s, ok := n.sent[u]; ok && now.Sub(s.at) < presenceWindow {
			next = min(next, presenceWindow-now.Sub(s.at))
			continue
		}
		due = append(due, u)
		delete(n.pending, u)
	}
	for u, s := range n.sent {
		if now.Sub(s.at) >= presenceWindow && !n.pending[u] {
			delete(n.sent, u)
		}
	}
	n.mu.Unlock()
	for len(due) > 0 {
		batch := due[:min(len(due), 500)]
		due = due[len(batch):]
		n.sendBatch(ctx, batch, now)
	}
	return next
}

func (n *presenceNotifier) sendBatch(ctx context.Context, users []string, now time.Time) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r, err := n.g.repo.GetPresence(cctx, &gochatv1.GetPresenceRequest{UserIds: users})
	if err != nil {
		n.g.log.Warn("read presence to announce", "users", len(users), "err", err)
		return
	}
	for _, p := range r.Users {
		n.mu.Lock()
		last, ok := n.sent[p.UserId]
		n.sent[p.UserId] = sentPresence{at: now, online: p.Online}
		n.mu.Unlock()
		if ok && last.online == p.Online {
			continue // flapped back within the window: nothing changed for the contacts
		}
		n.announce(ctx, p)
	}
}

func (n *presenceNotifier) announce(ctx context.Context, p *gochatv1.UserPresence) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := n.g.repo.ListContacts(cctx, &gochatv1.ListContactsRequest{UserId: p.UserId})
	if err != nil {
		n.g.log.Warn("list contacts to announce presence", "user_id", p.UserId, "err", err)
		return
	}
	frame := clientapi.Frame(clientapi.TypePresence, clientapi.PresenceFrom(p))
	if _, err := n.g.relay(cctx, c.UserIds, frame); err != nil {
		n.g.log.Warn("relay presence", "user_id", p.UserId, "err", err)
	}
}
