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

// Contacts returns the distinct users, other than userID, who share at least
// one conversation with userID, at most limit of them.
func (s *Store) Contacts(ctx context.Context, userID string, limit int) ([]string, error) {
	var out []string
	err := s.db.WithContext(ctx).Raw(
		`SELECT DISTINCT other.user_id FROM members mine JOIN members other ON other.conversation_id = mine.conversation_id
		 WHERE mine.user_id = ? AND other.user_id <> ? LIMIT ?`, userID, userID, limit).Scan(&out).Error
	if err != nil {
		return nil, fmt.Errorf("list contacts of %s: %w", userID, err)
	}
	return out, nil
}

func (s *Server) ListContacts(ctx context.Context, in *gochatv1.ListContactsRequest) (*gochatv1.ListContactsResponse, error) {
	if !ids.Valid(in.UserId) {
		return nil, invalid("user_id is not a valid id")
	}
	limit := int(in.Limit)
	if limit <= 0 || limit > maxContacts {
		limit = maxContacts
	}
	users, err := s.store.Contacts(ctx, in.UserId, limit)
	if err != nil {
		return nil, err
	}
	return &gochatv1.ListContactsResponse{UserIds: users}, nil
}
