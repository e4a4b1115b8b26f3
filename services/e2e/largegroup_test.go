package e2e

import (
	"net/http"
	"testing"
	"time"

	"github.com/gochat/gochat/services/internal/clientapi"
	tc "github.com/gochat/gochat/services/testcluster"
)

// TestLargeGroups covers groups past the bounds that protect the cluster:
// presence is announced only through small groups, and a group of more than
// 10,000 members still gets its messages.
func TestLargeGroups(t *testing.T) {
	c := tc.StartCluster(t, tc.Options{
		RepoFlags: []string{"--presence-max-group-members=3"},
		TaskEnv:   []string{"GOCHAT_ROUTE_CACHE_TTL=3s"},
	})
	t.Run("presence goes through direct conversations and small groups only", func(t *testing.T) { testPresenceBound(t, c) })
	t.Run("a group of more than 10,000 members, routed from im-task's cache", func(t *testing.T) { testHugeGroup(t, c) })
}

// testHugeGroup: a group of 10,052 members (more than a gateway's 10,000
// deliveries per push and im-repo's 5,000 ids per call) gets every message,
// and a member who comes online while im-task routes the group from its
// cache (built when it was offline) still gets the next message, pushed or
// by the resync that im-task owes it once it sees the new session; typing
// in it reaches the others.
func testHugeGroup(t *testing.T, c *tc.Cluster) {
	owner, reader, late := register(t, c, "hown"), register(t, c, "hread"), register(t, c, "hlate")
	rw := tc.DialWS(t, c.WSURL(), reader.Token)
	g := createGroup(t, owner, "huge", reader, late)
	rw.Next(t, "event", wait) // group_created
	fillGroup(t, c, g.ID, 10_050)
	sendHuge := func(id string) clientapi.Message {
		var m clientapi.Message
		if st := owner.Must(t, http.MethodPost, "/v1/conversations/"+g.ID+"/messages", map[string]any{"client_msg_id": id, "content": "to ten thousand"}, &m); st != 201 {
			t.Fatalf("send %s: status %d", id, st)
		}
		return m
	}
	got := uniqueSeqs{}
	m1 := sendHuge("huge-1")
	waitAll(t, rw, g.ID, map[int64]bool{m1.Seq: true}, got, 30*time.Second)

	// late comes online now: im-task read its presence (offline) for m1
	// less than the 3s TTL ago.
	lw := tc.DialWS(t, c.WSURL(), late.Token)
	m2 := sendHuge("huge-2")
	waitAll(t, rw, g.ID, map[int64]bool{m2.Seq: true}, got, 30*time.Second)
	lateGot := uniqueSeqs{}
	waitAll(t, lw, g.ID, map[int64]bool{m2.Seq: true}, lateGot, 30*time.Second)

	// Typing looks up the presence of every other member: more than
	// im-repo answers in one call, so the relay asks in batches.
	if err := lw.Send("typing", map[string]string{"conversation_id": g.ID}); err != nil {
		t.Fatal(err)
	}
	var ty clientapi.TypingData
	rw.Next(t, "typing", 30*time.Second).Decode(t, &ty)
	if ty.ConversationID != g.ID || ty.UserID != late.User.ID {
		t.Fatalf("typing frame = %+v, want %s typing in %s", ty, late.User.ID, g.ID)
	}
	if f, ok := lw.Wait("error", 500*time.Millisecond); ok {
		t.Fatalf("typing in the huge group got an error: %s", f.Data)
	}
}

func createGroup(t *testing.T, owner *tc.API, name string, members ...*tc.API) clientapi.Conversation {
	t.Helper()
	var ids []string
	for _, m := range members {
		ids = append(ids, m.User.ID)
	}
	var g clientapi.Conversation
	if st := owner.Must(t, http.MethodPost, "/v1/groups", map[string]any{"name": name, "member_ids": ids}, &g); st != 201 {
		t.Fatalf("create group %s: status %d", name, st)
	}
	return g
}

// testPresenceBound: with --presence-max-group-members=3, pat's coming online
// reaches the members of a 3-member group and of a direct conversation, not
// those of a 4-member group, who still read it from GET /v1/users/{id}.
func testPresenceBound(t *testing.T, c *tc.Cluster) {
	pat, quinn, x := register(t, c, "pat"), register(t, c, "quinn"), register(t, c, "x")
	rita, y, dora := register(t, c, "rita"), register(t, c, "y"), register(t, c, "dora")
	createGroup(t, pat, "small", quinn, x)      // 3 members: at the bound
	createGroup(t, pat, "large", rita, y, dora) // 4 members: over it
	direct(t, pat, dora)                        // dora also shares a direct conversation

	watchers := map[string]*tc.WS{}
	for name, u := range map[string]*tc.API{"quinn": quinn, "rita": rita, "dora": dora} {
		watchers[name] = tc.DialWS(t, c.WSURL(), u.Token)
	}
	tc.DialWS(t, c.WSURL(), pat.Token)
	tests := []struct {
		name string
		want bool
	}{
		{"quinn", true}, // the small group
		{"dora", true},  // the direct conversation
		{"rita", false}, // the large group only
	}
	for _, tt := range tests {
		w := watchers[tt.name]
		f, ok := w.Wait("presence", 3*time.Second)
		if ok != tt.want {
			t.Fatalf("%s got a presence frame: %v, want %v (%s)", tt.name, ok, tt.want, f.Data)
		}
		if ok {
			var p clientapi.Presence
			f.Decode(t, &p)
			if p.UserID != pat.User.ID || !p.Online {
				t.Fatalf("%s: presence frame %+v, want %s online", tt.name, p, pat.User.ID)
			}
		}
	}
	var found presentUser
	rita.Must(t, http.MethodGet, "/v1/users/"+pat.User.ID, nil, &found)
	if !found.Online {
		t.Fatalf("GET /v1/users/%s by a large group's member = %+v, want online: the lookup is always the truth", pat.User.ID, found)
	}
}
