package e2e

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/api/pki"
	"github.com/gochat/gochat/services/internal/authtoken"
	"github.com/gochat/gochat/services/internal/clientapi"
	tc "github.com/gochat/gochat/services/testcluster"
)

// TestConnect covers the WebSocket connect: the hello's user comes from the
// token (older tokens without a profile are looked up), a user who no longer
// exists is refused, and connects that come together are registered in
// presence in shared calls.
func TestConnect(t *testing.T) {
	c := tc.StartCluster(t, tc.Options{})
	db, err := sql.Open("mysql", c.MySQLDSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	t.Run("hello carries the user from the token", func(t *testing.T) { testHelloFromToken(t, c, db) })
	t.Run("a token without a profile still connects", func(t *testing.T) { testOldToken(t, c, db) })
	t.Run("a user who no longer exists is refused", func(t *testing.T) { testGoneUser(t, c, db) })
	t.Run("connects together share presence registrations", func(t *testing.T) { testBatchedConnects(t, c, db) })
}

func guest(t *testing.T, c *tc.Cluster, nickname string) *tc.API {
	t.Helper()
	var r struct {
		User  clientapi.User `json:"user"`
		Token string         `json:"token"`
	}
	if st := (&tc.API{Base: c.URL()}).Must(t, http.MethodPost, "/v1/auth/guest", map[string]string{"nickname": nickname}, &r); st != http.StatusOK {
		t.Fatalf("guest: status %d", st)
	}
	return &tc.API{Base: c.URL(), Token: r.Token, User: r.User}
}

// oldToken is a token as im-logic issued them before tokens carried the
// user's profile.
func oldToken(t *testing.T, c *tc.Cluster, u clientapi.User) string {
	t.Helper()
	keys, err := authtoken.New(c.Secret, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := keys.Issue(u.ID, u.Guest, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func setNickname(t *testing.T, db *sql.DB, userID, nickname string) {
	t.Helper()
	if _, err := db.Exec("UPDATE users SET nickname = ? WHERE id = ?", nickname, userID); err != nil {
		t.Fatal(err)
	}
}

// deleteUser removes a user as the guest sweep (--guest-ttl) does.
func deleteUser(t *testing.T, db *sql.DB, userID string) {
	t.Helper()
	res, err := db.Exec("DELETE FROM users WHERE id = ?", userID)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		t.Fatalf("deleted %d users, want 1", n)
	}
}

// gatewayCounter reads a counter from the gateway's /metrics; series is the
// name with its labels as the text format writes them.
func gatewayCounter(t *testing.T, c *tc.Cluster, series string) float64 {
	t.Helper()
	return counter(t, c.GatewayMetrics, series)
}

// counter reads a counter from the /metrics at addr.
func counter(t *testing.T, addr, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", sc.Text(), err)
			}
			return f
		}
	}
	return 0 // a counter vector's series appears on its first increment
}

func testHelloFromToken(t *testing.T, c *tc.Cluster, db *sql.DB) {
	ann := register(t, c, "ann")
	visitor := guest(t, c, `Visitor "é" <b>`)
	// The longest nickname, 256 bytes, makes the longest token: it still
	// fits a request line.
	longest := guest(t, c, strings.Repeat("😀", 64))
	before := gatewayCounter(t, c, `gochat_gateway_hello_user_total{from="token"}`)
	for _, u := range []*tc.API{ann, visitor, longest} {
		// The database's copy changes after the token was issued: the hello
		// shows the token's (the documented staleness), which proves no
		// lookup was made.
		setNickname(t, db, u.User.ID, "changed later")
		w := tc.DialWS(t, c.WSURL(), u.Token)
		if w.Hello.User != u.User {
			t.Fatalf("hello user = %+v, want the registered %+v", w.Hello.User, u.User)
		}
		if w.Hello.SessionID == "" || w.Hello.HeartbeatMs <= 0 {
			t.Fatalf("hello = %+v", w.Hello)
		}
		// A token issued after the change carries it.
		var login struct {
			User  clientapi.User `json:"user"`
			Token string         `json:"token"`
		}
		if !u.User.Guest {
			(&tc.API{Base: c.URL()}).Must(t, http.MethodPost, "/v1/auth/login",
				map[string]string{"username": u.User.Username, "password": "password-" + u.User.Username}, &login)
			if w2 := tc.DialWS(t, c.WSURL(), login.Token); w2.Hello.User.Nickname != "changed later" || w2.Hello.User.ID != u.User.ID {
				t.Fatalf("hello after a new login = %+v", w2.Hello.User)
			}
		}
	}
	if got := gatewayCounter(t, c, `gochat_gateway_hello_user_total{from="token"}`) - before; got != 4 {
		t.Fatalf("%v hellos from the token, want 4", got)
	}
}

func testOldToken(t *testing.T, c *tc.Cluster, db *sql.DB) {
	bob := register(t, c, "bob")
	visitor := guest(t, c, "Old Visitor")
	before := gatewayCounter(t, c, `gochat_gateway_hello_user_total{from="lookup"}`)
	for _, u := range []*tc.API{bob, visitor} {
		setNickname(t, db, u.User.ID, "looked up")
		want := u.User
		want.Nickname = "looked up"
		w := tc.DialWS(t, c.WSURL(), oldToken(t, c, u.User))
		if w.Hello.User != want {
			t.Fatalf("hello user = %+v, want %+v as the database has it", w.Hello.User, want)
		}
		// The session works: a ping is answered.
		if err := w.Send("ping", struct{}{}); err != nil {
			t.Fatal(err)
		}
		w.Next(t, "pong", wait)
	}
	if got := gatewayCounter(t, c, `gochat_gateway_hello_user_total{from="lookup"}`) - before; got != 2 {
		t.Fatalf("%v hellos from a lookup, want 2", got)
	}
}

// refusal checks that a connection gets what a connect of a missing user
// always got: error not_found as its first frame, then close 1008, and never
// a hello. It runs on any goroutine, so it reports rather than fails.
func refusal(c *tc.Cluster, token string) error {
	w, err := tc.TryDialWS(c.WSURL(), token)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer w.Close()
	f, ok := w.Wait("", wait)
	if !ok || f.Type != "error" {
		return fmt.Errorf("first frame %q %s, want an error", f.Type, f.Data)
	}
	var e clientapi.ErrorData
	if err := json.Unmarshal(f.Data, &e); err != nil || e.Code != "not_found" || e.Message != "user not found" {
		return fmt.Errorf("error frame %s (%v), want not_found \"user not found\"", f.Data, err)
	}
	if code, closed := w.Closed(wait); !closed || code != ws.StatusPolicyViolation {
		return fmt.Errorf("closed %v with %d, want 1008", closed, code)
	}
	if hellos := w.Drain("hello"); len(hellos) > 0 {
		return fmt.Errorf("a missing user got hello %s", hellos[0].Data)
	}
	return nil
}

func presenceOf(t *testing.T, c *tc.Cluster, userIDs []string) *gochatv1.GetPresenceResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	pr, err := gochatv1.NewRepoServiceClient(c.Dial(t, c.RepoGRPC, pki.Gateway, pki.Repo)).GetPresence(ctx, &gochatv1.GetPresenceRequest{UserIds: userIDs})
	if err != nil {
		t.Fatal(err)
	}
	return pr
}

func testGoneUser(t *testing.T, c *tc.Cluster, db *sql.DB) {
	gone := guest(t, c, "Swept")
	old := oldToken(t, c, gone.User)
	deleteUser(t, db, gone.User.ID)
	tests := []struct{ name, token string }{
		{"token with a profile", gone.Token},
		{"token without a profile", old},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := refusal(c, tt.token); err != nil {
				t.Fatal(err)
			}
		})
	}
	if pr := presenceOf(t, c, []string{gone.User.ID}); len(pr.Sessions) != 0 || pr.Users[0].Online {
		t.Fatalf("presence of the missing user: %v", pr)
	}
}

func testBatchedConnects(t *testing.T, c *tc.Cluster, db *sql.DB) {
	const live, gone = 40, 4
	users := make([]*tc.API, live+gone)
	for i := range users {
		users[i] = guest(t, c, fmt.Sprintf("Batch %d", i))
	}
	for _, u := range users[live:] {
		deleteUser(t, db, u.User.ID)
	}
	calls := gatewayCounter(t, c, "gochat_gateway_presence_register_calls_total")
	// Every client dials at once; each live one must be greeted as itself,
	// each gone one refused.
	hellos := make([]clientapi.Hello, len(users))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if i >= live {
				if err := refusal(c, u.Token); err != nil {
					t.Errorf("client %d of a missing user: %v", i, err)
				}
				return
			}
			w, err := tc.TryDialWS(c.WSURL(), u.Token)
			if err != nil {
				t.Errorf("dial %d: %v", i, err)
				return
			}
			t.Cleanup(w.Close)
			f, ok := w.Wait("hello", wait)
			if !ok {
				t.Errorf("client %d: no hello", i)
				return
			}
			if err := json.Unmarshal(f.Data, &hellos[i]); err != nil {
				t.Errorf("client %d: hello %s: %v", i, f.Data, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if t.Failed() {
		return
	}
	ids := make([]string, len(users))
	for i, u := range users {
		ids[i] = u.User.ID
		if i < live && hellos[i].User != u.User {
			t.Fatalf("client %d: hello user %+v, want %+v", i, hellos[i].User, u.User)
		}
	}
	made := gatewayCounter(t, c, "gochat_gateway_presence_register_calls_total") - calls
	t.Logf("%d connects (%d refused) registered in %v calls", len(users), gone, made)
	if made < 1 || made >= float64(len(users)) {
		t.Fatalf("%v RegisterSessions calls for %d connects at once, want fewer than one each", made, len(users))
	}
	// Presence has every live session, by its hello's id, and no gone user.
	pr := presenceOf(t, c, ids)
	have := map[string]string{}
	for _, s := range pr.Sessions {
		have[s.SessionId] = s.UserId
	}
	for i := 0; i < live; i++ {
		if have[hellos[i].SessionID] != users[i].User.ID {
			t.Fatalf("client %d: session %s not in presence as its user (presence: %v)", i, hellos[i].SessionID, have)
		}
	}
	if len(pr.Sessions) != live {
		t.Fatalf("presence holds %d sessions, want %d", len(pr.Sessions), live)
	}
	missing := map[string]bool{}
	for _, id := range ids[live:] {
		missing[id] = true
	}
	for _, u := range pr.Users {
		if u.Online == missing[u.UserId] {
			t.Fatalf("presence of %s (missing: %v): online %v", u.UserId, missing[u.UserId], u.Online)
		}
	}
}
