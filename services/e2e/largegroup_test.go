package e2e

import (
	"fmt"
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
		TaskEnv:   []string{"GOCHAT_ROUTE_CACHE_TTL=3s", "GOCHAT_ROUTE_CACHE_MAX_AGE=60s"},
		// Members are added to the huge group through the API too.
		LogicFlags: []string{"--max-group-members=20000"},
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

	// While no member's sessions come or go, their presence is not read
	// again: for longer than the TTL messages go out, and im-task reads the
	// change log, not the 10,052 members (the refresher would read them
	// all every half TTL without it).
	refreshed := counter(t, c.TaskMetrics, `gochat_task_route_lookups_total{source="refresh"}`)
	for i := range 4 {
		m := sendHuge(fmt.Sprintf("quiet-%d", i))
		waitAll(t, rw, g.ID, map[int64]bool{m.Seq: true}, got, 30*time.Second)
		waitAll(t, lw, g.ID, map[int64]bool{m.Seq: true}, lateGot, 30*time.Second)
		time.Sleep(time.Second)
	}
	if n := counter(t, c.TaskMetrics, `gochat_task_route_lookups_total{source="refresh"}`) - refreshed; n > 100 {
		t.Fatalf("%v members' presence read again in 4s of unchanged presence", n)
	}
	if counter(t, c.TaskMetrics, `gochat_task_presence_change_reads_total{result="complete"}`) == 0 {
		t.Fatal("im-task never read the presence change log")
	}

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
	testRouteFollowsMembers(t, c, owner, rw, g.ID, got, sendHuge)
}

// testRouteFollowsMembers: while im-task pushes the huge group along the
// route it made for it (the members' sessions by gateway), a change of its
// members takes effect at the next message: one who joins while online
// gets it pushed, one who was removed gets nothing more.
func testRouteFollowsMembers(t *testing.T, c *tc.Cluster, owner *tc.API, rw *tc.WS, conv string, got uniqueSeqs, send func(string) clientapi.Message) {
	joiner, leaver := register(t, c, "hjoin"), register(t, c, "hleave")
	jw, lvw := tc.DialWS(t, c.WSURL(), joiner.Token), tc.DialWS(t, c.WSURL(), leaver.Token)
	if st := owner.Must(t, http.MethodPost, "/v1/groups/"+conv+"/members", map[string]any{"user_ids": []string{joiner.User.ID, leaver.User.ID}}, nil); st != 200 {
		t.Fatalf("add members: status %d", st)
	}
	pushedTo := func(w *tc.WS, seq int64, timeout time.Duration) bool {
		deadline := time.Now().Add(timeout)
		for {
			f, ok := w.Wait("message", time.Until(deadline))
			if !ok {
				return false
			}
			var m clientapi.Message
			f.Decode(t, &m)
			if m.ConversationID == conv && m.Seq == seq {
				return true
			}
		}
	}
	routed := counter(t, c.TaskMetrics, `gochat_task_route_lookups_total{source="route"}`)
	var last clientapi.Message
	for i := 0; i < 5; i++ { // the first makes the route, the next go along it
		last = send(fmt.Sprintf("route-%d", i))
		waitAll(t, rw, conv, map[int64]bool{last.Seq: true}, got, 30*time.Second)
		if !pushedTo(jw, last.Seq, 30*time.Second) || !pushedTo(lvw, last.Seq, 30*time.Second) {
			t.Fatalf("message %d was not pushed to the members who joined online", last.Seq)
		}
	}
	if after := counter(t, c.TaskMetrics, `gochat_task_route_lookups_total{source="route"}`); after <= routed {
		t.Fatalf("no message went along the group's route (route lookups %v, then %v)", routed, after)
	}
	if st := owner.Must(t, http.MethodDelete, "/v1/groups/"+conv+"/members/"+leaver.User.ID, nil, nil); st != 204 && st != 200 {
		t.Fatalf("remove member: status %d", st)
	}
	m := send("route-after-removal")
	waitAll(t, rw, conv, map[int64]bool{m.Seq: true}, got, 30*time.Second)
	if !pushedTo(jw, m.Seq, 30*time.Second) {
		t.Fatalf("message %d did not reach a member after another's removal", m.Seq)
	}
	if pushedTo(lvw, m.Seq, 2*time.Second) {
		t.Fatalf("message %d reached a member removed before it was sent", m.Seq)
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
