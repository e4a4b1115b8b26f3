package repo

import (
	"context"
	"fmt"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/ids"
)

// maxContacts bounds one ListContacts answer: presence is best effort, and a
// user in huge groups must not make every connect fan out without limit.
const maxContacts = 5000

// maxContactsBatch bounds the users of one ListContactsBatch call.
const maxContactsBatch = 500

// DefaultPresenceMaxGroupMembers is the largest group whose members hear
// each other's presence when no bound is configured. Like Discord's
// large_threshold: in a bigger group every member coming online would cost
// a frame to every other member, members² frames when they all connect.
const DefaultPresenceMaxGroupMembers = 300

// carriesPresence is the condition on a membership mine of conversation c
// that its conversation carries presence: direct (first argument), or a
// group with no member past the bound (second), found by reading at most
// bound+1 index entries rather than counting a 10,000-member group.
const carriesPresence = `(c.type = ? OR
	(SELECT n.user_id FROM members n WHERE n.conversation_id = mine.conversation_id ORDER BY n.user_id LIMIT 1 OFFSET ?) IS NULL)`

// Contacts returns the distinct users, other than userID, who share with
// userID a direct conversation or a group of at most maxGroup members, at
// most limit of them.
func (s *Store) Contacts(ctx context.Context, userID string, maxGroup, limit int) ([]string, error) {
	// Two statements: a group's size is checked once per conversation of
	// the user, by reading at most maxGroup+1 index entries (is there a
	// member past the bound?) rather than counting a 10,000-member group
	// at every connect, and a large group's members are never listed.
	var convs []string
	err := s.db.WithContext(ctx).Raw(
		`SELECT mine.conversation_id FROM members mine JOIN conversations c ON c.id = mine.conversation_id
		 WHERE mine.user_id = ? AND `+carriesPresence, userID, convDirect, maxGroup).Scan(&convs).Error
	if err != nil {
		return nil, fmt.Errorf("list conversations of %s that carry presence: %w", userID, err)
	}
	if len(convs) == 0 {
		return nil, nil
	}
	var out []string
	err = s.db.WithContext(ctx).Raw(
		`SELECT DISTINCT user_id FROM members WHERE conversation_id IN ? AND user_id <> ? LIMIT ?`, convs, userID, limit).Scan(&out).Error
	if err != nil {
		return nil, fmt.Errorf("list contacts of %s: %w", userID, err)
	}
	return out, nil
}

// ListContacts answers who hears about the user's presence: the members of
// the user's direct conversations and of groups of at most
// Config.PresenceMaxGroupMembers members.
func (s *Server) ListContacts(ctx context.Context, in *gochatv1.ListContactsRequest) (*gochatv1.ListContactsResponse, error) {
	if !ids.Valid(in.UserId) {
		return nil, invalid("user_id is not a valid id")
	}
	users, err := s.store.Contacts(ctx, in.UserId, s.presenceMaxGroup, contactLimit(in.Limit))
	if err != nil {
		return nil, err
	}
	return &gochatv1.ListContactsResponse{UserIds: users}, nil
}

// ContactsOf is Contacts for many users in a few statements: one for the
// conversations of all of them that carry presence, and one per 1,000 of
// those conversations for their members. Users with no such conversation
// (the members of large groups only, most of a reconnect storm) cost
// nothing past the first. The answer has an entry for every user, nil for
// those without contacts.
func (s *Store) ContactsOf(ctx context.Context, userIDs []string, maxGroup, limit int) (map[string][]string, error) {
	out := make(map[string][]string, len(userIDs))
	if len(userIDs) == 0 {
		return out, nil
	}
	var pairs []struct {
		UserID         string
		ConversationID string
	}
	err := s.db.WithContext(ctx).Raw(
		`SELECT mine.user_id, mine.conversation_id FROM members mine JOIN conversations c ON c.id = mine.conversation_id
		 WHERE mine.user_id IN ? AND `+carriesPresence, userIDs, convDirect, maxGroup).Scan(&pairs).Error
	if err != nil {
		return nil, fmt.Errorf("list conversations of %d users that carry presence: %w", len(userIDs), err)
	}
	if len(pairs) == 0 {
		return out, nil
	}
	convSet := map[string]bool{}
	for _, p := range pairs {
		convSet[p.ConversationID] = true
	}
	convs := make([]string, 0, len(convSet))
	for c := range convSet {
		convs = append(convs, c)
	}
	members := make(map[string][]string, len(convs))
	for start := 0; start < len(convs); start += 1000 {
		chunk := convs[start:min(start+1000, len(convs))]
		var rows []struct {
			ConversationID string
			UserID         string
		}
		if err := s.db.WithContext(ctx).Raw(
			`SELECT conversation_id, user_id FROM members WHERE conversation_id IN ?`, chunk).Scan(&rows).Error; err != nil {
			return nil, fmt.Errorf("list the members of %d conversations: %w", len(chunk), err)
		}
		for _, r := range rows {
			members[r.ConversationID] = append(members[r.ConversationID], r.UserID)
		}
	}
	seen := map[string]map[string]bool{}
	for _, p := range pairs {
		if seen[p.UserID] == nil {
			seen[p.UserID] = map[string]bool{p.UserID: true}
		}
		for _, m := range members[p.ConversationID] {
			if len(out[p.UserID]) >= limit {
				break
			}
			if !seen[p.UserID][m] {
				seen[p.UserID][m] = true
				out[p.UserID] = append(out[p.UserID], m)
			}
		}
	}
	return out, nil
}

// ListContactsBatch is ListContacts for many users at once.
func (s *Server) ListContactsBatch(ctx context.Context, in *gochatv1.ListContactsBatchRequest) (*gochatv1.ListContactsBatchResponse, error) {
	if len(in.UserIds) == 0 || len(in.UserIds) > maxContactsBatch {
		return nil, invalid("user_ids must hold 1 to %d users, got %d", maxContactsBatch, len(in.UserIds))
	}
	seen := make(map[string]bool, len(in.UserIds))
	for _, u := range in.UserIds {
		if !ids.Valid(u) {
			return nil, invalid("user_ids: %q is not a valid id", u)
		}
		if seen[u] {
			return nil, invalid("user_ids: %s is there twice", u)
		}
		seen[u] = true
	}
	byUser, err := s.store.ContactsOf(ctx, in.UserIds, s.presenceMaxGroup, contactLimit(in.Limit))
	if err != nil {
		return nil, err
	}
	out := &gochatv1.ListContactsBatchResponse{Users: make([]*gochatv1.UserContacts, len(in.UserIds))}
	for i, u := range in.UserIds {
		out.Users[i] = &gochatv1.UserContacts{UserId: u, ContactIds: byUser[u]}
	}
	return out, nil
}

// contactLimit is a request's limit of contacts per user: maxContacts when
// unset or above it.
func contactLimit(l int32) int {
	if l <= 0 || l > maxContacts {
		return maxContacts
	}
	return int(l)
}
