package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/gochat/gochat/services/internal/clientapi"
	tc "github.com/gochat/gochat/services/testcluster"
)

// presentUser is GET /v1/users/{id} with the v1.1 presence fields.
type presentUser struct {
	clientapi.User
	Online     bool            `json:"online"`
	LastSeenAt *clientapi.Time `json:"last_seen_at"`
}

// testPresenceTyping drives the v1.1 additions through the public API:
// case-insensitive usernames, presence on lookups and as frames, typing.
// pat connects to the gateway at wsPat, the others to the one at wsOthers.
func testPresenceTyping(t *testing.T, base, wsPat, wsOthers string) {
	name := uniq("pat")
	// A capitalised username registers (and signs in, and is found) as lower case.
	up := strings.ToUpper(name[:1]) + name[1:]
	anon := &tc.API{Base: base}
	var reg struct {
		User  clientapi.User `json:"user"`
		Token string         `json:"token"`
	}
	anon.Must(t, "POST", "/v1/auth/register", map[string]string{"username": up, "password": "password-" + name}, &reg)
	if reg.User.Username != name {
		t.Fatalf("registered %q as %q, want %q", up, reg.User.Username, name)
	}
	if st, err := anon.Do("POST", "/v1/auth/register", map[string]string{"username": strings.ToUpper(name), "password": "password-" + name}, nil); st != 409 {
		t.Fatalf("registering %q again in upper case: status %d (%v), want 409", name, st, err)
	}
	anon.Must(t, "POST", "/v1/auth/login", map[string]string{"username": strings.ToUpper(name), "password": "password-" + name}, &reg)
	pat := &tc.API{Base: base, Token: reg.Token, User: reg.User}
	quinn := tc.Register(t, base, uniq("quinn"))
	stranger := tc.Register(t, base, uniq("stranger"))
	var found presentUser
	quinn.Must(t, "GET", "/v1/users?username="+strings.ToUpper(name), nil, &found)
	if found.ID != pat.User.ID || found.Online || found.LastSeenAt != nil {
		t.Fatalf("lookup of a user never connected = %+v, want %s offline and never seen", found, pat.User.ID)
	}
	conv := direct(t, pat, quinn)

	// quinn is connected; pat comes online: quinn gets a presence frame, the lookup says online.
	qw := tc.DialWS(t, wsOthers, quinn.Token)
	pw := tc.DialWS(t, wsPat, pat.Token)
	var p clientapi.Presence
	qw.Next(t, "presence", wait).Decode(t, &p)
	if p.UserID != pat.User.ID || !p.Online {
		t.Fatalf("presence frame = %+v, want %s online", p, pat.User.ID)
	}
	quinn.Must(t, "GET", "/v1/users/"+pat.User.ID, nil, &found)
	if !found.Online || found.LastSeenAt == nil {
		t.Fatalf("lookup of a connected user = %+v, want online with last_seen_at", found)
	}

	// The members of a direct conversation carry presence too; a group's do not.
	var dc struct {
		Members []map[string]any `json:"members"`
	}
	quinn.Must(t, "GET", "/v1/conversations/"+conv.ID, nil, &dc)
	for _, m := range dc.Members {
		if m["user_id"] == pat.User.ID && (m["online"] != true || m["last_seen_at"] == nil) {
			t.Fatalf("pat as a member of a direct conversation: %v, want online with last_seen_at", m)
		}
		if _, ok := m["online"]; !ok {
			t.Fatalf("direct conversation member without presence: %v", m)
		}
	}
	var group struct {
		ID      string           `json:"id"`
		Members []map[string]any `json:"members"`
	}
	quinn.Must(t, "POST", "/v1/groups", map[string]any{"name": "g", "member_ids": []string{pat.User.ID}}, &group)
	for _, m := range group.Members {
		if _, ok := m["online"]; ok {
			t.Fatalf("group member with presence: %v", m)
		}
	}

	// Typing: relayed to the other member, at most one per second per
	// conversation and connection; a non-member gets not_found.
	if err := pw.Send("typing", map[string]string{"conversation_id": conv.ID}); err != nil {
		t.Fatal(err)
	}
	var ty clientapi.TypingData
	qw.Next(t, "typing", wait).Decode(t, &ty)
	if ty.ConversationID != conv.ID || ty.UserID != pat.User.ID {
		t.Fatalf("typing frame = %+v", ty)
	}
	for i := 0; i < 5; i++ {
		_ = pw.Send("typing", map[string]string{"conversation_id": conv.ID})
	}
	if f, ok := qw.Wait("typing", 700*time.Millisecond); ok {
		t.Fatalf("a typing frame within a second of the last one was relayed: %s", f.Data)
	}
	if _, ok := pw.Wait("typing", 100*time.Millisecond); ok {
		t.Fatal("the sender got its own typing frame")
	}
	sw := tc.DialWS(t, wsOthers, stranger.Token)
	_ = sw.Send("typing", map[string]string{"conversation_id": conv.ID})
	var e clientapi.ErrorData
	sw.Next(t, "error", wait).Decode(t, &e)
	if e.Code != "not_found" {
		t.Fatalf("typing by a non-member: error %+v, want not_found", e)
	}
	if f, ok := qw.Wait("typing", 1500*time.Millisecond); ok {
		t.Fatalf("a non-member's typing reached a member: %s", f.Data)
	}

	// pat's last session ends: quinn hears pat went offline, with a last-seen time.
	pw.Close()
	qw.Next(t, "presence", wait).Decode(t, &p)
	if p.UserID != pat.User.ID || p.Online || p.LastSeenAt == nil {
		t.Fatalf("presence frame after the last session = %+v, want %s offline with last_seen_at", p, pat.User.ID)
	}
	quinn.Must(t, "GET", "/v1/users/"+pat.User.ID, nil, &found)
	if found.Online || found.LastSeenAt == nil {
		t.Fatalf("lookup after the last session = %+v, want offline with last_seen_at", found)
	}
	if _, ok := sw.Wait("presence", 500*time.Millisecond); ok {
		t.Fatal("a user who shares no conversation got a presence frame")
	}
}

func TestPresenceTypingDev(t *testing.T) {
	_, base := startDev(t, t.TempDir())
	ws := strings.Replace(base, "http://", "ws://", 1) + "/v1/ws"
	testPresenceTyping(t, base, ws, ws)
}

// testPresenceTwoGateways runs the same with pat on a second gateway process:
// typing and presence go from gateway to gateway (PushService.Push).
func testPresenceTwoGateways(t *testing.T, c *tc.Cluster) {
	second := c.StartGateway(t, "im-gateway-2")
	testPresenceTyping(t, c.URL(), "ws://"+second+"/v1/ws", c.WSURL())
}
