package gateway

import (
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
