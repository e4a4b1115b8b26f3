package gateway

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
	var changed []*gochatv1.UserPresence
	for _, p := range r.Users {
		n.mu.Lock()
		last, ok := n.sent[p.UserId]
		n.sent[p.UserId] = sentPresence{at: now, online: p.Online}
		n.mu.Unlock()
		if ok && last.online == p.Online {
			continue // flapped back within the window: nothing changed for the contacts
		}
		changed = append(changed, p)
	}
	if len(changed) == 0 {
		return
	}
	lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
	contacts, err := n.contacts(lctx, changed)
	lcancel()
	if err != nil {
		n.g.log.Warn("list contacts to announce presence", "users", len(changed), "err", err)
		return
	}
	for i, p := range changed {
		if len(contacts[i]) > 0 {
			n.announce(ctx, p, contacts[i])
		}
	}
}

func (n *presenceNotifier) announce(ctx context.Context, p *gochatv1.UserPresence, contacts []string) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	frame := clientapi.Frame(clientapi.TypePresence, clientapi.PresenceFrom(p))
	if _, err := n.g.relay(cctx, contacts, frame); err != nil {
		n.g.log.Warn("relay presence", "user_id", p.UserId, "err", err)
	}
}

// contacts lists the contacts of each of users (at most a batch of 500) in
// one call: a reconnect storm's thousands of users cost a call and a few
// queries per 500, where a call per user cost thousands of queries while
// the storm's messages waited for the same cores. An im-repo older than
// ListContactsBatch is asked user by user.
func (n *presenceNotifier) contacts(ctx context.Context, users []*gochatv1.UserPresence) ([][]string, error) {
	ids := make([]string, len(users))
	for i, p := range users {
		ids[i] = p.UserId
	}
	out := make([][]string, len(users))
	r, err := n.g.repo.ListContactsBatch(ctx, &gochatv1.ListContactsBatchRequest{UserIds: ids})
	if status.Code(err) == codes.Unimplemented {
		for i, id := range ids {
			c, err := n.g.repo.ListContacts(ctx, &gochatv1.ListContactsRequest{UserId: id})
			if err != nil {
				return nil, fmt.Errorf("list contacts of %s: %w", id, err)
			}
			out[i] = c.UserIds
		}
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list contacts of %d users: %w", len(ids), err)
	}
	if len(r.Users) != len(ids) {
		return nil, fmt.Errorf("list contacts of %d users: im-repo answered for %d", len(ids), len(r.Users))
	}
	for i, u := range r.Users {
		out[i] = u.ContactIds
	}
	return out, nil
}
