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

// DefaultPresenceMaxGroupMembers is the largest group whose members hear
// each other's presence when no bound is configured. Like Discord's
// large_threshold: in a bigger group every member coming online would cost
// a frame to every other member, members² frames when they all connect.
const DefaultPresenceMaxGroupMembers = 300

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
		 WHERE mine.user_id = ? AND (c.type = ? OR
		   (SELECT n.user_id FROM members n WHERE n.conversation_id = mine.conversation_id ORDER BY n.user_id LIMIT 1 OFFSET ?) IS NULL)`,
		userID, convDirect, maxGroup).Scan(&convs).Error
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
	limit := int(in.Limit)
	if limit <= 0 || limit > maxContacts {
		limit = maxContacts
	}
	users, err := s.store.Contacts(ctx, in.UserId, s.presenceMaxGroup, limit)
	if err != nil {
		return nil, err
	}
	return &gochatv1.ListContactsResponse{UserIds: users}, nil
}
