package repo_test

import (
	"testing"
	"time"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/apierror"
	"github.com/gochat/gochat/services/internal/repo"
	tc "github.com/gochat/gochat/services/testcluster"
)

// Unused guest accounts (in no conversation) are deleted once older than
// the TTL, in batches; guests who chat and registered users stay.
func TestGuestExpiry(t *testing.T) {
	for _, dialect := range []string{"mysql", "sqlite"} {
		t.Run(dialect, func(t *testing.T) {
			cfg := dbConfig(t, dialect)
			// Batches of 2, so the seven unused guests take several.
			e := startWith(t, cfg, repo.Config{MemberCacheTTL: time.Minute, StoreWorkers: 1, StoreMaxBatch: 16,
				GuestTTL: 2 * time.Second, GuestSweepEvery: 200 * time.Millisecond, GuestSweepBatch: 2})
			guest := func(name string) *gochatv1.User {
				r, err := e.client.CreateUser(ctx, &gochatv1.CreateUserRequest{Username: tc.RandomName("guest-" + name), Nickname: name, Guest: true})
				if err != nil {
					t.Fatal(err)
				}
				return r.User
			}
			var unused []*gochatv1.User
			for i := 0; i < 7; i++ {
				unused = append(unused, guest("idle"))
			}
			chatty, registered := guest("chatty"), user(t, e, "reg")
			if _, err := e.client.GetOrCreateDirect(ctx, &gochatv1.GetOrCreateDirectRequest{UserId: chatty.Id, PeerId: registered.Id}); err != nil {
				t.Fatal(err)
			}
			exists := func(u *gochatv1.User) bool {
				t.Helper()
				_, err := e.client.GetUser(ctx, &gochatv1.GetUserRequest{Key: &gochatv1.GetUserRequest_Id{Id: u.Id}})
				if err != nil && !apierror.IsCode(err, apierror.NotFound) {
					t.Fatal(err)
				}
				return err == nil
			}
			// Positive control: younger than the TTL, nobody goes.
			for _, u := range append(unused, chatty, registered) {
				if !exists(u) {
					t.Fatalf("user %s deleted before the TTL", u.Username)
				}
			}
			deadline := time.Now().Add(30 * time.Second)
			for {
				left := 0
				for _, u := range unused {
					if exists(u) {
						left++
					}
				}
				if left == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d unused guests still exist long after the TTL", left, len(unused))
				}
				time.Sleep(200 * time.Millisecond)
			}
			if !exists(chatty) || !exists(registered) {
				t.Fatalf("a guest in a conversation (%v) or a registered user (%v) was deleted", exists(chatty), exists(registered))
			}
		})
	}
}
