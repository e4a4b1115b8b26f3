package gateway

import (
	"context"
	"slices"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
)

// contactsStub answers contacts from a table, by batch unless it plays an
// im-repo from before ListContactsBatch.
type contactsStub struct {
	gochatv1.RepoServiceClient
	contacts map[string][]string
	old      bool
	batches  int
	singles  int
}

func (c *contactsStub) ListContactsBatch(_ context.Context, in *gochatv1.ListContactsBatchRequest, _ ...grpc.CallOption) (*gochatv1.ListContactsBatchResponse, error) {
	if c.old {
		return nil, status.Error(codes.Unimplemented, "unknown method ListContactsBatch")
	}
	c.batches++
	r := &gochatv1.ListContactsBatchResponse{}
	for _, u := range in.UserIds {
		r.Users = append(r.Users, &gochatv1.UserContacts{UserId: u, ContactIds: c.contacts[u]})
	}
	return r, nil
}

func (c *contactsStub) ListContacts(_ context.Context, in *gochatv1.ListContactsRequest, _ ...grpc.CallOption) (*gochatv1.ListContactsResponse, error) {
	c.singles++
	return &gochatv1.ListContactsResponse{UserIds: c.contacts[in.UserId]}, nil
}

func TestPresenceContacts(t *testing.T) {
	table := map[string][]string{"a": {"b", "c"}, "b": {"a"}}
	users := []*gochatv1.UserPresence{{UserId: "a"}, {UserId: "z"}, {UserId: "b"}}
	for _, tt := range []struct {
		name             string
		old              bool
		batches, singles int
	}{
		{"one batch call", false, 1, 0},
		{"an older im-repo: a call per user", true, 0, 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			stub := &contactsStub{contacts: table, old: tt.old}
			n := &presenceNotifier{g: &Gateway{repo: stub}}
			got, err := n.contacts(context.Background(), users)
			if err != nil {
				t.Fatal(err)
			}
			want := [][]string{{"b", "c"}, nil, {"a"}}
			if !slices.EqualFunc(got, want, slices.Equal) {
				t.Fatalf("contacts %v, want %v", got, want)
			}
			if stub.batches != tt.batches || stub.singles != tt.singles {
				t.Fatalf("%d batch and %d single calls, want %d and %d", stub.batches, stub.singles, tt.batches, tt.singles)
			}
		})
	}
}
