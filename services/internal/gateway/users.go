package gateway

import (
	"context"
	"net/http"
	"strings"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/clientapi"
)

// normalUsername lower-cases a username before anything else looks at it:
// usernames are case-insensitive (v1.1), so "Alice" registers and finds
// "alice". Stored usernames were always lower case (registration only ever
// accepted [a-z0-9_.-]), so no existing row needs changing.
func normalUsername(s string) string { return strings.ToLower(s) }

// writePresentUser answers a user lookup with the user's presence. Presence
// is best effort: when it cannot be read the user is still answered, offline
// and never seen, rather than failing the lookup.
func (g *Gateway) writePresentUser(w http.ResponseWriter, r *http.Request, req *gochatv1.GetUserRequest) {
	resp, err := g.logic.GetUser(r.Context(), req)
	if err != nil {
		writeError(w, err)
		return
	}
	out := clientapi.PresentUser{User: clientapi.UserFrom(resp.User)}
	p, err := g.repo.GetPresence(r.Context(), &gochatv1.GetPresenceRequest{UserIds: []string{resp.User.Id}})
	if err != nil {
		g.log.Warn("read presence for a user lookup", "user_id", resp.User.Id, "err", err)
	} else if len(p.Users) == 1 {
		pr := clientapi.PresenceFrom(p.Users[0])
		out.Online, out.LastSeenAt = pr.Online, pr.LastSeenAt
	}
	writeJSON(w, http.StatusOK, out)
}

// withPresence sets the presence of the members of direct conversations, in
// one lookup. Best effort: without presence the conversations are answered
// as they are.
func (g *Gateway) withPresence(ctx context.Context, convs []clientapi.Conversation) {
	var users []string
	seen := map[string]bool{}
	for _, c := range convs {
		if c.Type != "direct" {
			continue
		}
		for _, m := range c.Members {
			if !seen[m.UserID] {
				seen[m.UserID] = true
				users = append(users, m.UserID)
			}
		}
	}
	if len(users) == 0 {
		return
	}
	r, err := g.repo.GetPresence(ctx, &gochatv1.GetPresenceRequest{UserIds: users})
	if err != nil {
		g.log.Warn("read presence of direct conversation members", "users", len(users), "err", err)
		return
	}
	byUser := make(map[string]*clientapi.MemberPresence, len(r.Users))
	for _, u := range r.Users {
		p := clientapi.PresenceFrom(u)
		byUser[u.UserId] = &clientapi.MemberPresence{Online: p.Online, LastSeenAt: p.LastSeenAt}
	}
	for _, c := range convs {
		if c.Type != "direct" {
			continue
		}
		for i := range c.Members {
			c.Members[i].MemberPresence = byUser[c.Members[i].UserID]
		}
	}
}
