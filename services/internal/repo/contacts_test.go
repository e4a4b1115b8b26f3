package repo_test

import (
	"slices"
	"testing"
	"time"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/apierror"
	"github.com/gochat/gochat/services/internal/ids"
	"github.com/gochat/gochat/services/internal/repo"
)

// testPresenceTransitions checks that presence reports the first session of
// a user coming and the last one going, and the last-seen time.
func testPresenceTransitions(t *testing.T, e *env) {
	a, b := user(t, e, "pa"), user(t, e, "pb")
	s1 := &gochatv1.Session{UserId: a.Id, SessionId: "t1", Gateway: "10.0.0.1:9000"}
	s2 := &gochatv1.Session{UserId: a.Id, SessionId: "t2", Gateway: "10.0.0.2:9000"}
	steps := []struct {
		name       string
		register   []*gochatv1.Session
		unregister []*gochatv1.Session
		want       []string // came online or went offline
	}{
		{"first session: online", []*gochatv1.Session{s1}, nil, []string{a.Id}},
		{"second session: no change", []*gochatv1.Session{s2}, nil, nil},
		{"renewal: no change", []*gochatv1.Session{s1, s2}, nil, nil},
		{"one of two gone: no change", nil, []*gochatv1.Session{s1}, nil},
		{"last session gone: offline", nil, []*gochatv1.Session{s2}, []string{a.Id}},
		{"gone again: no change", nil, []*gochatv1.Session{s2}, nil},
	}
	for _, st := range steps {
		var got []string
		if st.register != nil {
			r, err := e.client.RegisterSessions(ctx, &gochatv1.RegisterSessionsRequest{Sessions: st.register, TtlMs: 60000})
			if err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			got = r.CameOnline
		} else {
			r, err := e.client.UnregisterSessions(ctx, &gochatv1.UnregisterSessionsRequest{Sessions: st.unregister})
			if err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			got = r.WentOffline
		}
		if !slices.Equal(got, st.want) {
			t.Fatalf("%s: got %v, want %v", st.name, got, st.want)
		}
	}
	r, err := e.client.GetPresence(ctx, &gochatv1.GetPresenceRequest{UserIds: []string{a.Id, b.Id}})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Users) != 2 || r.Users[0].UserId != a.Id || r.Users[0].Online || r.Users[0].LastSeenMs == 0 ||
		r.Users[1].UserId != b.Id || r.Users[1].Online || r.Users[1].LastSeenMs != 0 {
		t.Fatalf("presence of a (gone) and b (never seen): %v", r.Users)
	}
	if _, err := e.client.RegisterSessions(ctx, &gochatv1.RegisterSessionsRequest{Sessions: []*gochatv1.Session{s1}, TtlMs: 60000}); err != nil {
		t.Fatal(err)
	}
	r, err = e.client.GetPresence(ctx, &gochatv1.GetPresenceRequest{UserIds: []string{a.Id}})
	if err != nil || len(r.Users) != 1 || !r.Users[0].Online {
		t.Fatalf("presence of a, back online: %v %v", r, err)
	}
}

// testContacts checks who hears about a user's presence: everyone who shares
// a conversation with them, once, and nobody else.
func testContacts(t *testing.T, e *env) {
	a, b, c, d := user(t, e, "ca"), user(t, e, "cb"), user(t, e, "cc"), user(t, e, "cd")
	if _, err := e.client.CreateGroup(ctx, &gochatv1.CreateGroupRequest{Name: "g", OwnerId: a.Id, MemberIds: []string{b.Id, c.Id}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.GetOrCreateDirect(ctx, &gochatv1.GetOrCreateDirectRequest{UserId: a.Id, PeerId: b.Id}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		user *gochatv1.User
		want []string
	}{
		{a, []string{b.Id, c.Id}},
		{b, []string{a.Id, c.Id}},
		{d, nil},
	}
	for _, tt := range tests {
		checkContacts(t, e, tt.user, tt.want)
	}
	// All of them in one batch: each gets its own answer, in order.
	r, err := e.client.ListContactsBatch(ctx, &gochatv1.ListContactsBatchRequest{UserIds: []string{d.Id, a.Id, b.Id}})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Users) != 3 || r.Users[0].UserId != d.Id || r.Users[1].UserId != a.Id || r.Users[2].UserId != b.Id {
		t.Fatalf("batch answer for d, a, b: %v", r.Users)
	}
	for i, want := range [][]string{nil, {b.Id, c.Id}, {a.Id, c.Id}} {
		// Ids made in the same millisecond sort in any order: both sides are sorted.
		want = slices.Sorted(slices.Values(want))
		if got := slices.Sorted(slices.Values(r.Users[i].ContactIds)); !slices.Equal(got, want) {
			t.Fatalf("batch: contacts of %s: got %v, want %v", r.Users[i].UserId, got, want)
		}
	}
	r, err = e.client.ListContactsBatch(ctx, &gochatv1.ListContactsBatchRequest{UserIds: []string{a.Id}, Limit: 1})
	if err != nil || len(r.Users) != 1 || len(r.Users[0].ContactIds) != 1 {
		t.Fatalf("batch with limit 1: %v %v", r, err)
	}
	_, err = e.client.ListContacts(ctx, &gochatv1.ListContactsRequest{UserId: "not an id"})
	wantCode(t, err, apierror.InvalidArgument)
	tooMany := make([]string, 501)
	for i := range tooMany {
		tooMany[i] = ids.New()
	}
	for name, users := range map[string][]string{
		"none":      nil,
		"501 users": tooMany,
		"a bad id":  {a.Id, "not an id"},
		"twice":     {a.Id, a.Id},
	} {
		t.Run("batch with "+name, func(t *testing.T) {
			_, err := e.client.ListContactsBatch(ctx, &gochatv1.ListContactsBatchRequest{UserIds: users})
			wantCode(t, err, apierror.InvalidArgument)
		})
	}
}

// TestPresenceBound checks that presence goes only through direct
// conversations and groups of at most PresenceMaxGroupMembers members: in a
// larger group, every member coming online would be announced to all others.
func TestPresenceBound(t *testing.T) {
	for _, dialect := range []string{"mysql", "sqlite"} {
		t.Run(dialect, func(t *testing.T) {
			cfg := dbConfig(t, dialect)
			e := startWith(t, cfg, repo.Config{MemberCacheTTL: time.Minute, StoreWorkers: 1, StoreMaxBatch: 16, PresenceMaxGroupMembers: 3})
			a, b, c, d, f, g := user(t, e, "a"), user(t, e, "b"), user(t, e, "c"), user(t, e, "d"), user(t, e, "f"), user(t, e, "g")
			group(t, e, a, b, c)    // 3 members: at the bound, carries presence
			group(t, e, a, d, f, g) // 4 members: over it
			if _, err := e.client.GetOrCreateDirect(ctx, &gochatv1.GetOrCreateDirectRequest{UserId: a.Id, PeerId: g.Id}); err != nil {
				t.Fatal(err)
			}
			tests := []struct {
				name string
				user *gochatv1.User
				want []string
			}{
				{"small group and direct", a, []string{b.Id, c.Id, g.Id}},
				{"small group only", b, []string{a.Id, c.Id}},
				{"large group only", d, nil},
				{"large group and direct", g, []string{a.Id}},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) { checkContacts(t, e, tt.user, tt.want) })
			}
		})
	}
}

// checkContacts checks ListContacts and ListContactsBatch of user against
// want, in any order.
func checkContacts(t *testing.T, e *env, user *gochatv1.User, want []string) {
	t.Helper()
	r, err := e.client.ListContacts(ctx, &gochatv1.ListContactsRequest{UserId: user.Id})
	if err != nil {
		t.Fatal(err)
	}
	w := slices.Sorted(slices.Values(want))
	if got := slices.Sorted(slices.Values(r.UserIds)); !slices.Equal(got, w) {
		t.Fatalf("contacts of %s: got %v, want %v", user.Nickname, got, w)
	}
	b, err := e.client.ListContactsBatch(ctx, &gochatv1.ListContactsBatchRequest{UserIds: []string{user.Id}})
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Users) != 1 || b.Users[0].UserId != user.Id {
		t.Fatalf("batch answer for %s: %v", user.Nickname, b.Users)
	}
	if got := slices.Sorted(slices.Values(b.Users[0].ContactIds)); !slices.Equal(got, w) {
		t.Fatalf("batch: contacts of %s: got %v, want %v", user.Nickname, got, w)
	}
}
