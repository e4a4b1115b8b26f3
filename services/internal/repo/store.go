package repo

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/glebarez/go-sqlite"
	"github.com/go-sql-driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/apierror"
	"github.com/gochat/gochat/services/internal/ids"
)

// Store is the MySQL (or SQLite) side of im-repo: the source of truth.
type Store struct {
	db  *gorm.DB
	now func() time.Time
}

// NewStore wraps an open, migrated database.
func NewStore(db *gorm.DB) *Store {
	return &Store{db: db, now: time.Now}
}

func (s *Store) nowMs() int64 { return s.now().UnixMilli() }

func (s *Store) mysql() bool { return s.db.Dialector.Name() == "mysql" }

// forUpdate locks the rows it selects on MySQL. SQLite has one writer at a
// time, so a transaction there is already alone.
func (s *Store) forUpdate(tx *gorm.DB) *gorm.DB {
	if s.mysql() {
		return tx.Clauses(clause.Locking{Strength: "UPDATE"})
	}
	return tx
}

// isDuplicateKey reports a unique index violation on either database.
func isDuplicateKey(err error) bool {
	var my *mysql.MySQLError
	if errors.As(err, &my) {
		return my.Number == 1062
	}
	var lite *sqlite.Error
	if errors.As(err, &lite) {
		return lite.Code() == 2067 || lite.Code() == 1555 // SQLITE_CONSTRAINT_UNIQUE, _PRIMARYKEY
	}
	return errors.Is(err, gorm.ErrDuplicatedKey)
}

// isRetryable reports a deadlock or lock wait timeout: the transaction can run again.
func isRetryable(err error) bool {
	var my *mysql.MySQLError
	if errors.As(err, &my) {
		return my.Number == 1213 || my.Number == 1205
	}
	var lite *sqlite.Error
	if errors.As(err, &lite) {
		return lite.Code()&0xff == 5 // SQLITE_BUSY
	}
	return false
}

func userToProto(u *userRow) *gochatv1.User {
	return &gochatv1.User{Id: u.ID, Username: u.Username, Nickname: u.Nickname, Guest: u.Guest, CreatedAtMs: u.CreatedAtMs}
}

func messageToProto(m *messageRow) *gochatv1.Message {
	return &gochatv1.Message{
		Id: m.ID, ConversationId: m.ConversationID, Seq: m.Seq, SenderId: m.SenderID,
		ClientMsgId: m.ClientMsgID, ContentType: m.ContentType, Content: m.Content, CreatedAtMs: m.CreatedAtMs,
	}
}

var roleToProto = map[int8]gochatv1.Role{roleOwner: gochatv1.Role_ROLE_OWNER, roleAdmin: gochatv1.Role_ROLE_ADMIN, roleMember: gochatv1.Role_ROLE_MEMBER}

func memberToProto(m *memberRow) *gochatv1.Member {
	return &gochatv1.Member{UserId: m.UserID, Role: roleToProto[m.Role], ReadSeq: m.ReadSeq}
}

// CreateUser stores a new user; a taken username is AlreadyExists.
func (s *Store) CreateUser(ctx context.Context, username, passwordHash, nickname string, guest bool) (*gochatv1.User, error) {
	u := userRow{ID: ids.New(), Username: username, PasswordHash: passwordHash, Nickname: nickname, Guest: guest, CreatedAtMs: s.nowMs()}
	if err := s.db.WithContext(ctx).Create(&u).Error; err != nil {
		if isDuplicateKey(err) {
			return nil, apierror.New(apierror.AlreadyExists, "username %q is taken", username)
		}
		return nil, fmt.Errorf("create user: %w", err)
	}
	return userToProto(&u), nil
}

func (s *Store) userBy(ctx context.Context, column, value string) (*userRow, error) {
	var u userRow
	err := s.db.WithContext(ctx).Where(column+" = ?", value).Take(&u).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return nil, apierror.New(apierror.NotFound, "user not found")
	}
	if err != nil {
		return nil, fmt.Errorf("get user by %s: %w", column, err)
	}
	return &u, nil
}

// GetUser finds a user by id.
func (s *Store) GetUser(ctx context.Context, id string) (*gochatv1.User, error) {
	u, err := s.userBy(ctx, "id", id)
	if err != nil {
		return nil, err
	}
	return userToProto(u), nil
}

// GetUserByUsername finds a user by username, with the password hash for login.
func (s *Store) GetUserByUsername(ctx context.Context, username string) (*gochatv1.User, string, error) {
	u, err := s.userBy(ctx, "username", username)
	if err != nil {
		return nil, "", err
	}
	return userToProto(u), u.PasswordHash, nil
}

// MissingUsers returns which of the ids are no user (never were, or were
// deleted), in one query.
func (s *Store) MissingUsers(ctx context.Context, userIDs []string) ([]string, error) {
	if len(userIDs) == 0 {
		return nil, nil
	}
	var found []string
	if err := s.db.WithContext(ctx).Model(&userRow{}).Where("id IN ?", userIDs).Pluck("id", &found).Error; err != nil {
		return nil, fmt.Errorf("look up %d users: %w", len(userIDs), err)
	}
	have := make(map[string]bool, len(found))
	for _, id := range found {
		have[id] = true
	}
	var missing []string
	for _, id := range userIDs {
		if !have[id] {
			have[id] = true // once, however many times it was asked for
			missing = append(missing, id)
		}
	}
	return missing, nil
}

// requireUsers fails unless every id is a user, so membership never points at nobody.
func (s *Store) requireUsers(tx *gorm.DB, userIDs []string) error {
	if len(userIDs) == 0 {
		return nil
	}
	var found []string
	if err := tx.Model(&userRow{}).Where("id IN ?", userIDs).Pluck("id", &found).Error; err != nil {
		return fmt.Errorf("look up users: %w", err)
	}
	have := make(map[string]bool, len(found))
	for _, id := range found {
		have[id] = true
	}
	for _, id := range userIDs {
		if !have[id] {
			return apierror.New(apierror.NotFound, "user %s not found", id)
		}
	}
	return nil
}

func directKey(a, b string) string {
	if a > b {
		a, b = b, a
	}
	return a + ":" + b
}

// GetOrCreateDirect returns the one direct conversation of two users, creating it on first use.
func (s *Store) GetOrCreateDirect(ctx context.Context, userID, peerID string) (*gochatv1.Conversation, bool, error) {
	key := directKey(userID, peerID)
	db := s.db.WithContext(ctx)
	var c conversationRow
	err := db.Where("direct_key = ?", key).Take(&c).Error
	if err == nil {
		conv, err := s.GetConversation(ctx, c.ID, userID)
		return conv, false, err
	}
	if !errors.Is(err, gorm.ErrRecordNotFound) {
		return nil, false, fmt.Errorf("find direct conversation: %w", err)
	}
	now := s.nowMs()
	c = conversationRow{ID: ids.New(), Type: convDirect, DirectKey: &key, CreatedAtMs: now, LastActivityMs: now}
	err = db.Transaction(func(tx *gorm.DB) error {
		if err := s.requireUsers(tx, []string{userID, peerID}); err != nil {
			return err
		}
		if err := tx.Create(&c).Error; err != nil {
			return err
		}
		members := []memberRow{{ConversationID: c.ID, UserID: userID, Role: roleMember, JoinedAtMs: now}}
		if peerID != userID {
			members = append(members, memberRow{ConversationID: c.ID, UserID: peerID, Role: roleMember, JoinedAtMs: now})
		}
		return tx.Create(&members).Error
	})
	if isDuplicateKey(err) {
		// Both users opened the conversation at once: the other call created it.
		if err := db.Where("direct_key = ?", key).Take(&c).Error; err != nil {
			return nil, false, fmt.Errorf("find direct conversation after race: %w", err)
		}
		conv, err := s.GetConversation(ctx, c.ID, userID)
		return conv, false, err
	}
	if err != nil {
		if apierror.From(err).Code != apierror.Internal {
			return nil, false, err
		}
		return nil, false, fmt.Errorf("create direct conversation: %w", err)
	}
	conv, err := s.GetConversation(ctx, c.ID, userID)
	return conv, true, err
}

// CreateGroup creates a group owned by ownerID with the given members, and
// records its group-created event.
func (s *Store) CreateGroup(ctx context.Context, name, ownerID string, memberIDs []string) (*gochatv1.Conversation, *gochatv1.OutboxEvent, error) {
	now := s.nowMs()
	c := conversationRow{ID: ids.New(), Type: convGroup, Name: name, OwnerID: ownerID, CreatedAtMs: now, LastActivityMs: now}
	all := uniqueWithout(memberIDs, ownerID)
	var event *gochatv1.OutboxEvent
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := s.requireUsers(tx, append([]string{ownerID}, all...)); err != nil {
			return err
		}
		if err := tx.Create(&c).Error; err != nil {
			return fmt.Errorf("create group: %w", err)
		}
		rows := []memberRow{{ConversationID: c.ID, UserID: ownerID, Role: roleOwner, JoinedAtMs: now}}
		for _, id := range all {
			rows = append(rows, memberRow{ConversationID: c.ID, UserID: id, Role: roleMember, JoinedAtMs: now})
		}
		if err := tx.CreateInBatches(&rows, 500).Error; err != nil {
			return fmt.Errorf("add group members: %w", err)
		}
		var err error
		event, err = recordEvent(tx, c.ID, groupEvent(gochatv1.GroupEventKind_GROUP_EVENT_KIND_GROUP_CREATED, c.ID, ownerID, append([]string{ownerID}, all...)), now)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	conv, err := s.GetConversation(ctx, c.ID, ownerID)
	return conv, event, err
}

func uniqueWithout(in []string, drop string) []string {
	seen := map[string]bool{drop: true}
	out := make([]string, 0, len(in))
	for _, id := range in {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// lockGroupMember loads the group row (locked) and the actor's membership;
// a non-member gets NotFound, so ids cannot be probed.
func (s *Store) lockGroupMember(tx *gorm.DB, convID, actorID string) (*conversationRow, *memberRow, error) {
	var c conversationRow
	err := s.forUpdate(tx).Where("id = ?", convID).Take(&c).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return nil, nil, apierror.New(apierror.NotFound, "conversation not found")
	}
	if err != nil {
		return nil, nil, fmt.Errorf("load conversation: %w", err)
	}
	var m memberRow
	err = tx.Where("conversation_id = ? AND user_id = ?", convID, actorID).Take(&m).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return nil, nil, apierror.New(apierror.NotFound, "conversation not found")
	}
	if err != nil {
		return nil, nil, fmt.Errorf("load membership: %w", err)
	}
	if c.Type != convGroup {
		return nil, nil, apierror.New(apierror.InvalidArgument, "conversation %s is not a group", convID)
	}
	return &c, &m, nil
}

// AddMembers adds users to a group; only its owner or an admin may. When
// someone was added it records the members-added event.
func (s *Store) AddMembers(ctx context.Context, convID, actorID string, userIDs []string) (*gochatv1.Conversation, []string, *gochatv1.OutboxEvent, error) {
	var (
		added []string
		event *gochatv1.OutboxEvent
	)
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		_, actor, err := s.lockGroupMember(tx, convID, actorID)
		if err != nil {
			return err
		}
		if actor.Role != roleOwner && actor.Role != roleAdmin {
			return apierror.New(apierror.PermissionDenied, "only the group's owner or an admin can add members")
		}
		want := uniqueWithout(userIDs, "")
		if err := s.requireUsers(tx, want); err != nil {
			return err
		}
		var present []string
		if err := tx.Model(&memberRow{}).Where("conversation_id = ? AND user_id IN ?", convID, want).Pluck("user_id", &present).Error; err != nil {
			return fmt.Errorf("load members: %w", err)
		}
		have := map[string]bool{}
		for _, id := range present {
			have[id] = true
		}
		now := s.nowMs()
		var rows []memberRow
		for _, id := range want {
			if !have[id] {
				rows = append(rows, memberRow{ConversationID: convID, UserID: id, Role: roleMember, JoinedAtMs: now})
				added = append(added, id)
			}
		}
		if len(rows) == 0 {
			return nil
		}
		if err := tx.CreateInBatches(&rows, 500).Error; err != nil {
			return fmt.Errorf("add members: %w", err)
		}
		if err := bumpMembersVersion(tx, convID); err != nil {
			return err
		}
		event, err = recordEvent(tx, convID, groupEvent(gochatv1.GroupEventKind_GROUP_EVENT_KIND_MEMBER_ADDED, convID, actorID, added), now)
		return err
	})
	if err != nil {
		return nil, nil, nil, err
	}
	conv, err := s.GetConversation(ctx, convID, actorID)
	return conv, added, event, err
}

// RemoveMember removes userID from a group. With leave, the actor removes
// themselves; otherwise the owner may remove anyone, an admin only plain members.
// A departing owner hands the group to the oldest admin, else the oldest member.
// It records the member-removed (or member-left) event, which also reaches
// the user who is no longer a member.
func (s *Store) RemoveMember(ctx context.Context, convID, actorID, userID string, leave bool) (*gochatv1.OutboxEvent, error) {
	var event *gochatv1.OutboxEvent
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		_, actor, err := s.lockGroupMember(tx, convID, actorID)
		if err != nil {
			return err
		}
		target := actor
		if !leave {
			if actor.Role != roleOwner && actor.Role != roleAdmin {
				return apierror.New(apierror.PermissionDenied, "only the group's owner or an admin can remove members")
			}
			var m memberRow
			err := tx.Where("conversation_id = ? AND user_id = ?", convID, userID).Take(&m).Error
			if errors.Is(err, gorm.ErrRecordNotFound) {
				return apierror.New(apierror.NotFound, "user %s is not a member of this group", userID)
			}
			if err != nil {
				return fmt.Errorf("load member: %w", err)
			}
			if m.Role == roleOwner || (m.Role == roleAdmin && actor.Role != roleOwner) {
				return apierror.New(apierror.PermissionDenied, "an admin cannot remove the owner or another admin")
			}
			target = &m
		}
		if err := tx.Where("conversation_id = ? AND user_id = ?", convID, target.UserID).Delete(&memberRow{}).Error; err != nil {
			return fmt.Errorf("remove member: %w", err)
		}
		if err := bumpMembersVersion(tx, convID); err != nil {
			return err
		}
		kind := gochatv1.GroupEventKind_GROUP_EVENT_KIND_MEMBER_REMOVED
		if leave {
			kind = gochatv1.GroupEventKind_GROUP_EVENT_KIND_MEMBER_LEFT
		}
		event, err = recordEvent(tx, convID, groupEvent(kind, convID, actorID, []string{target.UserID}, target.UserID), s.nowMs())
		if err != nil {
			return err
		}
		if target.Role != roleOwner {
			return nil
		}
		var heir memberRow
		err = tx.Where("conversation_id = ?", convID).Order("role ASC, joined_at_ms ASC, user_id ASC").Take(&heir).Error
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return nil // the last member left: the group stays, empty, with its history.
		}
		if err != nil {
			return fmt.Errorf("find new owner: %w", err)
		}
		if err := tx.Model(&memberRow{}).Where("conversation_id = ? AND user_id = ?", convID, heir.UserID).Update("role", roleOwner).Error; err != nil {
			return fmt.Errorf("promote new owner: %w", err)
		}
		return tx.Model(&conversationRow{}).Where("id = ?", convID).Update("owner_id", heir.UserID).Error
	})
	if err != nil {
		return nil, err
	}
	return event, nil
}

// GetConversation returns a conversation as viewerID sees it; NotFound unless a member.
func (s *Store) GetConversation(ctx context.Context, convID, viewerID string) (*gochatv1.Conversation, error) {
	convs, err := s.conversationsFor(ctx, viewerID, []string{convID}, 1)
	if err != nil {
		return nil, err
	}
	if len(convs) == 0 {
		return nil, apierror.New(apierror.NotFound, "conversation not found")
	}
	return convs[0], nil
}

// ListConversations returns the user's conversations, most recent activity first.
func (s *Store) ListConversations(ctx context.Context, userID string, limit int) ([]*gochatv1.Conversation, error) {
	return s.conversationsFor(ctx, userID, nil, limit)
}

// convView is a conversation row joined with one member's read pointer.
type convView struct {
	ID             string
	Type           int8
	Name           string
	OwnerID        string
	MaxSeq         int64
	CreatedAtMs    int64
	LastActivityMs int64
	ReadSeq        int64
}

const convViewColumns = "c.id, c.type, c.name, c.owner_id, c.max_seq, c.created_at_ms, c.last_activity_ms, m.read_seq"

// conversationsFor loads conversations of userID (all, or only onlyIDs) with
// members and last messages in a fixed number of queries, whatever the count.
func (s *Store) conversationsFor(ctx context.Context, userID string, onlyIDs []string, limit int) ([]*gochatv1.Conversation, error) {
	db := s.db.WithContext(ctx)
	q := db.Table("conversations AS c").
		Select(convViewColumns).
		Joins("JOIN members AS m ON m.conversation_id = c.id AND m.user_id = ?", userID).
		Order("c.last_activity_ms DESC, c.id DESC").
		Limit(limit)
	if onlyIDs != nil {
		q = q.Where("c.id IN ?", onlyIDs)
	}
	var rows []convView
	if err := q.Scan(&rows).Error; err != nil {
		return nil, fmt.Errorf("list conversations: %w", err)
	}
	if len(rows) == 0 {
		return nil, nil
	}
	convIDs := make([]string, len(rows))
	lastKeys := make([][]any, 0, len(rows))
	for i, r := range rows {
		convIDs[i] = r.ID
		if r.MaxSeq > 0 {
			lastKeys = append(lastKeys, []any{r.ID, r.MaxSeq})
		}
	}
	var members []memberRow
	if err := db.Where("conversation_id IN ?", convIDs).Order("joined_at_ms, user_id").Find(&members).Error; err != nil {
		return nil, fmt.Errorf("list members: %w", err)
	}
	byConv := map[string][]*gochatv1.Member{}
	for i := range members {
		byConv[members[i].ConversationID] = append(byConv[members[i].ConversationID], memberToProto(&members[i]))
	}
	last := map[string]*gochatv1.Message{}
	if len(lastKeys) > 0 {
		var msgs []messageRow
		if err := db.Where("(conversation_id, seq) IN ?", lastKeys).Find(&msgs).Error; err != nil {
			return nil, fmt.Errorf("load last messages: %w", err)
		}
		for i := range msgs {
			last[msgs[i].ConversationID] = messageToProto(&msgs[i])
		}
	}
	out := make([]*gochatv1.Conversation, len(rows))
	for i, r := range rows {
		t := gochatv1.ConversationType_CONVERSATION_TYPE_GROUP
		if r.Type == convDirect {
			t = gochatv1.ConversationType_CONVERSATION_TYPE_DIRECT
		}
		out[i] = &gochatv1.Conversation{
			Id: r.ID, Type: t, Name: r.Name, OwnerId: r.OwnerID, Members: byConv[r.ID],
			MaxSeq: r.MaxSeq, ReadSeq: r.ReadSeq, LastMessage: last[r.ID],
			CreatedAtMs: r.CreatedAtMs, LastActivityMs: r.LastActivityMs,
		}
	}
	return out, nil
}

func bumpMembersVersion(tx *gorm.DB, convID string) error {
	if err := tx.Model(&conversationRow{}).Where("id = ?", convID).Update("members_version", gorm.Expr("members_version + 1")).Error; err != nil {
		return fmt.Errorf("bump member list version: %w", err)
	}
	return nil
}

// MembersVersions returns the member list version of each conversation that exists.
func (s *Store) MembersVersions(ctx context.Context, convIDs []string) (map[string]int64, error) {
	var rows []conversationRow
	if err := s.db.WithContext(ctx).Select("id, members_version").Where("id IN ?", convIDs).Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("load member list versions: %w", err)
	}
	out := make(map[string]int64, len(rows))
	for _, r := range rows {
		out[r.ID] = r.MembersVersion
	}
	return out, nil
}

// MembersOf returns the members of many conversations (no read pointers: callers fan out).
func (s *Store) MembersOf(ctx context.Context, convIDs []string) (map[string][]*gochatv1.Member, error) {
	var rows []memberRow
	if err := s.db.WithContext(ctx).Select("conversation_id, user_id, role").Where("conversation_id IN ?", convIDs).Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("load members: %w", err)
	}
	out := make(map[string][]*gochatv1.Member, len(convIDs))
	for _, id := range convIDs {
		out[id] = nil
	}
	for i := range rows {
		out[rows[i].ConversationID] = append(out[rows[i].ConversationID], &gochatv1.Member{UserId: rows[i].UserID, Role: roleToProto[rows[i].Role]})
	}
	return out, nil
}

func (s *Store) requireMember(ctx context.Context, convID, userID string) error {
	var n int64
	if err := s.db.WithContext(ctx).Model(&memberRow{}).Where("conversation_id = ? AND user_id = ?", convID, userID).Count(&n).Error; err != nil {
		return fmt.Errorf("check membership: %w", err)
	}
	if n == 0 {
		return apierror.New(apierror.NotFound, "conversation not found")
	}
	return nil
}

// ListMessages pages through a conversation's history for a member, ascending by seq.
func (s *Store) ListMessages(ctx context.Context, convID, viewerID string, afterSeq, beforeSeq int64, limit int) ([]*gochatv1.Message, bool, error) {
	if viewerID != "" { // empty only for im-task's internal reads
		if err := s.requireMember(ctx, convID, viewerID); err != nil {
			return nil, false, err
		}
	}
	q := s.db.WithContext(ctx).Where("conversation_id = ?", convID).Limit(limit + 1)
	if beforeSeq > 0 {
		q = q.Where("seq < ?", beforeSeq).Order("seq DESC")
	} else {
		q = q.Where("seq > ?", afterSeq).Order("seq ASC")
	}
	var rows []messageRow
	if err := q.Find(&rows).Error; err != nil {
		return nil, false, fmt.Errorf("list messages: %w", err)
	}
	hasMore := len(rows) > limit
	if hasMore {
		rows = rows[:limit]
	}
	if beforeSeq > 0 {
		sort.Slice(rows, func(i, j int) bool { return rows[i].Seq < rows[j].Seq })
	}
	out := make([]*gochatv1.Message, len(rows))
	for i := range rows {
		out[i] = messageToProto(&rows[i])
	}
	return out, hasMore, nil
}

// UpdateReadSeq moves a member's read pointer forward (never back, never
// past max_seq); when it moved, it records the read event (which skips
// originSession).
func (s *Store) UpdateReadSeq(ctx context.Context, convID, userID string, seq int64, originSession string) (int64, *gochatv1.OutboxEvent, error) {
	var (
		result int64
		event  *gochatv1.OutboxEvent
	)
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var m convView
		err := tx.Table("conversations AS c").Select(convViewColumns).
			Joins("JOIN members AS m ON m.conversation_id = c.id AND m.user_id = ?", userID).
			Where("c.id = ?", convID).Take(&m).Error
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return apierror.New(apierror.NotFound, "conversation not found")
		}
		if err != nil {
			return fmt.Errorf("load read pointer: %w", err)
		}
		target := min(seq, m.MaxSeq)
		res := tx.Model(&memberRow{}).Where("conversation_id = ? AND user_id = ? AND read_seq < ?", convID, userID, target).Update("read_seq", target)
		if res.Error != nil {
			return fmt.Errorf("update read pointer: %w", res.Error)
		}
		result = max(target, m.ReadSeq)
		if res.RowsAffected == 0 {
			return nil
		}
		event, err = recordEvent(tx, convID, &gochatv1.DispatchEvent{
			Event:           &gochatv1.DispatchEvent_Read{Read: &gochatv1.ReadEvent{ConversationId: convID, UserId: userID, Seq: result}},
			OriginSessionId: originSession,
		}, s.nowMs())
		return err
	})
	return result, event, err
}

// UnreadCounts sums each user's unread messages over all their conversations.
func (s *Store) UnreadCounts(ctx context.Context, userIDs []string) (map[string]int64, error) {
	type row struct {
		UserID string
		Unread int64
	}
	var rows []row
	err := s.db.WithContext(ctx).Table("members AS m").
		Select("m.user_id AS user_id, SUM(c.max_seq - m.read_seq) AS unread").
		Joins("JOIN conversations AS c ON c.id = m.conversation_id").
		Where("m.user_id IN ?", userIDs).Group("m.user_id").Scan(&rows).Error
	if err != nil {
		return nil, fmt.Errorf("count unread: %w", err)
	}
	out := make(map[string]int64, len(userIDs))
	for _, r := range rows {
		out[r.UserID] = r.Unread
	}
	return out, nil
}

// placeholders returns "?, ?, ?" for n values.
func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

// readCommittedTx runs fn in a READ COMMITTED transaction on MySQL. The
// outbox is written by every store batch while relays claim from it and acks
// clear it, and store workers write side by side. Under REPEATABLE READ a
// DELETE, a claim or an UPDATE takes next-key (gap) locks and keeps the
// locks of every row it scanned: an ack for an id already cleared, or one
// that sorts between the ids of a batch still inserting, locks the gap that
// batch inserts into while waiting for the batch's own rows (a deadlock, seen
// at 5,000 msg/s), and an UPDATE of a few conversations that MySQL runs as a
// scan of a small table locks the rows of the other workers' batches. READ
// COMMITTED takes no gap locks for these statements, releases the rows that
// do not match, and its semi-consistent read lets an UPDATE or DELETE pass
// over rows another transaction holds that cannot match, so each statement
// waits only for rows it changes.
func (s *Store) readCommittedTx(ctx context.Context, fn func(tx *gorm.DB) error) error {
	if !s.mysql() {
		return s.db.WithContext(ctx).Transaction(fn)
	}
	return s.db.WithContext(ctx).Transaction(fn, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
}

// AckDispatched removes messages from the outbox.
func (s *Store) AckDispatched(ctx context.Context, messageIDs []string) error {
	err := s.readCommittedTx(ctx, func(tx *gorm.DB) error {
		return deleteByKey(s, tx, "outbox", "message_id", messageIDs)
	})
	if err != nil {
		return fmt.Errorf("clear outbox: %w", err)
	}
	return nil
}

// ListUndispatched claims up to limit outbox messages stored before a time
// and not claimed by another relay, for lease, and returns them oldest first
// (each conversation's in seq order). On MySQL, rows another transaction is
// claiming are skipped (SKIP LOCKED), so replicas never wait on each other.
func (s *Store) ListUndispatched(ctx context.Context, storedBeforeMs int64, limit int, lease time.Duration) ([]*gochatv1.Message, error) {
	now := s.nowMs()
	var rows []messageRow
	err := s.readCommittedTx(ctx, func(tx *gorm.DB) error {
		q := tx.Model(&outboxRow{}).Where("stored_at_ms < ? AND lease_until_ms < ?", storedBeforeMs, now).
			Order("stored_at_ms, message_id").Limit(limit)
		if s.mysql() {
			q = q.Clauses(clause.Locking{Strength: "UPDATE", Options: "SKIP LOCKED"})
		}
		var ids []string
		if err := q.Pluck("message_id", &ids).Error; err != nil {
			return fmt.Errorf("claim outbox rows: %w", err)
		}
		if len(ids) == 0 {
			return nil
		}
		if err := tx.Table(s.byPrimaryKey("outbox")).Where("message_id IN ?", ids).Update("lease_until_ms", now+lease.Milliseconds()).Error; err != nil {
			return fmt.Errorf("lease outbox rows: %w", err)
		}
		return tx.Table("outbox AS o").Select("m.*").
			Joins("JOIN messages AS m ON m.id = o.message_id").
			Where("o.message_id IN ?", ids).
			Order("o.stored_at_ms, m.conversation_id, m.seq").Scan(&rows).Error
	})
	if err != nil {
		return nil, fmt.Errorf("list outbox: %w", err)
	}
	out := make([]*gochatv1.Message, len(rows))
	for i := range rows {
		out[i] = messageToProto(&rows[i])
	}
	return out, nil
}
