// Package repo is im-repo: every read and write of GoChat's data, behind gRPC.
package repo

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"gorm.io/gorm"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/apierror"
	"github.com/gochat/gochat/services/internal/ids"
)

// Limits bound what one call may ask for.
const (
	MaxPageSize     = 200
	MaxBatchIDs     = 5000
	MaxContentBytes = 64 << 10 // a hard ceiling; the gateway enforces the configured one
)

// Config is im-repo's own settings.
type Config struct {
	RedisPrefix    string
	MemberCacheTTL time.Duration
	StoreWorkers   int
	StoreMaxBatch  int
	// StoreTimeout bounds one batch's transaction: a hung database fails
	// its callers with unavailable instead of blocking every send.
	StoreTimeout time.Duration
	// OutboxLease is how long ListUndispatched's rows stay claimed by the
	// relay that listed them (default 30s).
	OutboxLease time.Duration
	// GuestTTL: guest accounts that belong to no conversation are deleted
	// this long after their creation (0: never), looked for every
	// GuestSweepEvery (default 1m), GuestSweepBatch (default 500) at a time.
	GuestTTL        time.Duration
	GuestSweepEvery time.Duration
	GuestSweepBatch int
	// PresenceMaxGroupMembers: presence is announced through direct
	// conversations and groups of at most this many members (0: the
	// default, DefaultPresenceMaxGroupMembers).
	PresenceMaxGroupMembers int
}

// Server implements gochatv1.RepoServiceServer.
type Server struct {
	gochatv1.UnimplementedRepoServiceServer
	store    *Store
	sender   *Sender
	members  *memberCache
	presence *Presence
	log      *slog.Logger

	outboxLease      time.Duration
	guests           guestExpiry
	presenceMaxGroup int
}

// NewServer wires the store, the caches and presence. Run the returned
// server's Run for as long as it serves.
func NewServer(db *gorm.DB, rdb redis.UniversalClient, cfg Config, log *slog.Logger) (*Server, error) {
	store := NewStore(db)
	logDB(log, db)
	if cfg.OutboxLease <= 0 {
		cfg.OutboxLease = 30 * time.Second
	}
	if cfg.GuestSweepEvery <= 0 {
		cfg.GuestSweepEvery = time.Minute
	}
	if cfg.GuestSweepBatch <= 0 {
		cfg.GuestSweepBatch = 500
	}
	if cfg.PresenceMaxGroupMembers <= 0 {
		cfg.PresenceMaxGroupMembers = DefaultPresenceMaxGroupMembers
	}
	sender, err := NewSender(store, log, cfg.StoreWorkers, cfg.StoreMaxBatch, cfg.StoreTimeout)
	if err != nil {
		return nil, err
	}
	return &Server{
		presenceMaxGroup: cfg.PresenceMaxGroupMembers,
		guests:           guestExpiry{ttl: cfg.GuestTTL, interval: cfg.GuestSweepEvery, batch: cfg.GuestSweepBatch},
		outboxLease:      cfg.OutboxLease,
		store:            store,
		sender:           sender,
		members:          &memberCache{rdb: rdb, prefix: cfg.RedisPrefix, ttl: cfg.MemberCacheTTL, log: log},
		presence:         NewPresence(rdb, cfg.RedisPrefix),
		log:              log,
	}, nil
}

// Run runs the store batcher, and the guest sweeper if guests expire,
// until ctx ends.
func (s *Server) Run(ctx context.Context) {
	var wg sync.WaitGroup
	if s.guests.ttl > 0 {
		wg.Add(1)
		go func() { defer wg.Done(); s.sweepGuests(ctx) }()
	}
	s.sender.Run(ctx)
	wg.Wait()
}

func invalid(format string, args ...any) error {
	return apierror.New(apierror.InvalidArgument, format, args...)
}

func checkID(field, v string) error {
	if !ids.Valid(v) {
		return invalid("%s %q is not a valid id", field, v)
	}
	return nil
}

func checkIDs(field string, vs []string) error {
	if len(vs) > MaxBatchIDs {
		return invalid("%s has %d ids, at most %d are allowed", field, len(vs), MaxBatchIDs)
	}
	for _, v := range vs {
		if err := checkID(field, v); err != nil {
			return err
		}
	}
	return nil
}

func pageLimit(n int32) int {
	if n <= 0 || n > MaxPageSize {
		return MaxPageSize
	}
	return int(n)
}

func (s *Server) CreateUser(ctx context.Context, in *gochatv1.CreateUserRequest) (*gochatv1.CreateUserResponse, error) {
	if in.Username == "" {
		return nil, invalid("username is required")
	}
	u, err := s.store.CreateUser(ctx, in.Username, in.PasswordHash, in.Nickname, in.Guest)
	if err != nil {
		return nil, err
	}
	return &gochatv1.CreateUserResponse{User: u}, nil
}

func (s *Server) GetUser(ctx context.Context, in *gochatv1.GetUserRequest) (*gochatv1.GetUserResponse, error) {
	switch k := in.Key.(type) {
	case *gochatv1.GetUserRequest_Id:
		if !ids.Valid(k.Id) {
			return nil, apierror.New(apierror.NotFound, "user not found")
		}
		u, err := s.store.GetUser(ctx, k.Id)
		if err != nil {
			return nil, err
		}
		return &gochatv1.GetUserResponse{User: u}, nil
	case *gochatv1.GetUserRequest_Username:
		u, _, err := s.store.GetUserByUsername(ctx, k.Username)
		if err != nil {
			return nil, err
		}
		return &gochatv1.GetUserResponse{User: u}, nil
	default:
		return nil, invalid("id or username is required")
	}
}

func (s *Server) GetCredentials(ctx context.Context, in *gochatv1.GetCredentialsRequest) (*gochatv1.GetCredentialsResponse, error) {
	u, hash, err := s.store.GetUserByUsername(ctx, in.Username)
	if err != nil {
		return nil, err
	}
	return &gochatv1.GetCredentialsResponse{User: u, PasswordHash: hash}, nil
}

func (s *Server) GetOrCreateDirect(ctx context.Context, in *gochatv1.GetOrCreateDirectRequest) (*gochatv1.ConversationResponse, error) {
	if err := checkIDs("user_id", []string{in.UserId, in.PeerId}); err != nil {
		return nil, err
	}
	c, created, err := s.store.GetOrCreateDirect(ctx, in.UserId, in.PeerId)
	if err != nil {
		return nil, err
	}
	return &gochatv1.ConversationResponse{Conversation: c, Created: created}, nil
}

func (s *Server) CreateGroup(ctx context.Context, in *gochatv1.CreateGroupRequest) (*gochatv1.ConversationResponse, error) {
	if err := checkID("owner_id", in.OwnerId); err != nil {
		return nil, err
	}
	if err := checkIDs("member_ids", in.MemberIds); err != nil {
		return nil, err
	}
	c, ev, err := s.store.CreateGroup(ctx, in.Name, in.OwnerId, in.MemberIds)
	if err != nil {
		return nil, err
	}
	return &gochatv1.ConversationResponse{Conversation: c, Created: true, Event: ev}, nil
}

func (s *Server) AddMembers(ctx context.Context, in *gochatv1.AddMembersRequest) (*gochatv1.AddMembersResponse, error) {
	if err := checkIDs("user_ids", in.UserIds); err != nil {
		return nil, err
	}
	if !ids.Valid(in.ConversationId) {
		return nil, apierror.New(apierror.NotFound, "conversation not found")
	}
	c, added, ev, err := s.store.AddMembers(ctx, in.ConversationId, in.ActorId, in.UserIds)
	if err != nil {
		return nil, err
	}
	if err := s.members.invalidate(ctx, in.ConversationId); err != nil {
		s.log.Warn("member cache not invalidated", "err", err)
	}
	return &gochatv1.AddMembersResponse{Conversation: c, AddedUserIds: added, Event: ev}, nil
}

func (s *Server) RemoveMember(ctx context.Context, in *gochatv1.RemoveMemberRequest) (*gochatv1.RemoveMemberResponse, error) {
	if !ids.Valid(in.ConversationId) {
		return nil, apierror.New(apierror.NotFound, "conversation not found")
	}
	if !in.Leave {
		if err := checkID("user_id", in.UserId); err != nil {
			return nil, err
		}
	}
	ev, err := s.store.RemoveMember(ctx, in.ConversationId, in.ActorId, in.UserId, in.Leave)
	if err != nil {
		return nil, err
	}
	if err := s.members.invalidate(ctx, in.ConversationId); err != nil {
		s.log.Warn("member cache not invalidated", "err", err)
	}
	return &gochatv1.RemoveMemberResponse{Event: ev}, nil
}

func (s *Server) GetConversation(ctx context.Context, in *gochatv1.GetConversationRequest) (*gochatv1.ConversationResponse, error) {
	if !ids.Valid(in.ConversationId) {
		return nil, apierror.New(apierror.NotFound, "conversation not found")
	}
	c, err := s.store.GetConversation(ctx, in.ConversationId, in.ViewerId)
	if err != nil {
		return nil, err
	}
	return &gochatv1.ConversationResponse{Conversation: c}, nil
}

func (s *Server) ListConversations(ctx context.Context, in *gochatv1.ListConversationsRequest) (*gochatv1.ListConversationsResponse, error) {
	cs, err := s.store.ListConversations(ctx, in.UserId, pageLimit(in.Limit))
	if err != nil {
		return nil, err
	}
	return &gochatv1.ListConversationsResponse{Conversations: cs}, nil
}

func (s *Server) GetMembers(ctx context.Context, in *gochatv1.GetMembersRequest) (*gochatv1.GetMembersResponse, error) {
	if err := checkIDs("conversation_ids", in.ConversationIds); err != nil {
		return nil, err
	}
	if len(in.KnownVersions) > len(in.ConversationIds) {
		return nil, invalid("known_versions has %d entries for %d conversation_ids", len(in.KnownVersions), len(in.ConversationIds))
	}
	// Versions first, then lists: a change committed in between leaves a
	// newer list under an older version, which the next read refetches.
	versions, err := s.store.MembersVersions(ctx, in.ConversationIds)
	if err != nil {
		return nil, err
	}
	// Lists the caller holds at their current version are not read at all:
	// a large group's members cross the wire only when they change.
	// (A list's first version is 0, so only a version sent counts.)
	held := func(id string) bool {
		v, ok := versions[id]
		known, sent := in.KnownVersions[id]
		return ok && sent && known == v
	}
	var want []string
	for _, id := range in.ConversationIds {
		if !held(id) {
			want = append(want, id)
		}
	}
	lists, misses := s.members.get(ctx, want, versions)
	if len(misses) > 0 {
		loaded, err := s.store.MembersOf(ctx, misses)
		if err != nil {
			return nil, err
		}
		s.members.put(ctx, loaded, versions)
		for id, m := range loaded {
			lists[id] = m
		}
	}
	out := &gochatv1.GetMembersResponse{Lists: make([]*gochatv1.MemberList, 0, len(in.ConversationIds))}
	for _, id := range in.ConversationIds {
		out.Lists = append(out.Lists, &gochatv1.MemberList{ConversationId: id, Members: lists[id], Version: versions[id], Unchanged: held(id)})
	}
	return out, nil
}

func (s *Server) StoreMessage(ctx context.Context, in *gochatv1.StoreMessageRequest) (*gochatv1.StoreMessageResponse, error) {
	if err := checkStore(in); err != nil {
		return nil, err
	}
	res := s.sender.Store(ctx, in)
	if res.err != nil {
		return nil, res.err
	}
	return &gochatv1.StoreMessageResponse{Message: res.msg, Duplicate: res.dup}, nil
}

// MaxStoreBatch bounds the messages of one StoreMessages call.
const MaxStoreBatch = 1000

func (s *Server) StoreMessages(ctx context.Context, in *gochatv1.StoreMessagesRequest) (*gochatv1.StoreMessagesResponse, error) {
	if n := len(in.Messages); n == 0 || n > MaxStoreBatch {
		return nil, invalid("messages has %d items, 1 to %d are allowed", n, MaxStoreBatch)
	}
	out := make([]*gochatv1.StoreMessageResult, len(in.Messages))
	var valid []*gochatv1.StoreMessageRequest
	var at []int
	for i, m := range in.Messages {
		if err := checkStore(m); err != nil {
			out[i] = &gochatv1.StoreMessageResult{Error: apierror.Item(err)}
			continue
		}
		valid = append(valid, m)
		at = append(at, i)
	}
	for j, res := range s.sender.StoreAll(ctx, valid) {
		if res.err != nil {
			// Internal errors were logged where they happened (Sender.commit).
			out[at[j]] = &gochatv1.StoreMessageResult{Error: apierror.Item(res.err)}
			continue
		}
		out[at[j]] = &gochatv1.StoreMessageResult{Stored: &gochatv1.StoreMessageResponse{Message: res.msg, Duplicate: res.dup}}
	}
	return &gochatv1.StoreMessagesResponse{Results: out}, nil
}

// checkStore validates one message to store.
func checkStore(in *gochatv1.StoreMessageRequest) error {
	switch {
	case !ids.Valid(in.ConversationId):
		return apierror.New(apierror.NotFound, "conversation not found")
	case !ids.Valid(in.SenderId):
		return invalid("sender_id is not a valid id")
	case in.ClientMsgId == "" || len(in.ClientMsgId) > 64:
		return invalid("client_msg_id must be 1 to 64 bytes")
	case in.ContentType == "" || len(in.ContentType) > 32:
		return invalid("content_type must be 1 to 32 bytes")
	case len(in.Content) > MaxContentBytes:
		return apierror.New(apierror.PayloadTooLarge, "content is %d bytes, at most %d are allowed", len(in.Content), MaxContentBytes)
	}
	return nil
}

func (s *Server) ListMessages(ctx context.Context, in *gochatv1.ListMessagesRequest) (*gochatv1.ListMessagesResponse, error) {
	if !ids.Valid(in.ConversationId) {
		return nil, apierror.New(apierror.NotFound, "conversation not found")
	}
	if in.AfterSeq < 0 || in.BeforeSeq < 0 {
		return nil, invalid("after_seq and before_seq cannot be negative")
	}
	msgs, more, err := s.store.ListMessages(ctx, in.ConversationId, in.ViewerId, in.AfterSeq, in.BeforeSeq, pageLimit(in.Limit))
	if err != nil {
		return nil, err
	}
	return &gochatv1.ListMessagesResponse{Messages: msgs, HasMore: more}, nil
}

func (s *Server) UpdateReadSeq(ctx context.Context, in *gochatv1.UpdateReadSeqRequest) (*gochatv1.UpdateReadSeqResponse, error) {
	if !ids.Valid(in.ConversationId) {
		return nil, apierror.New(apierror.NotFound, "conversation not found")
	}
	if in.Seq < 0 {
		return nil, invalid("seq cannot be negative")
	}
	seq, ev, err := s.store.UpdateReadSeq(ctx, in.ConversationId, in.UserId, in.Seq, in.OriginSessionId)
	if err != nil {
		return nil, err
	}
	return &gochatv1.UpdateReadSeqResponse{ReadSeq: seq, Moved: ev != nil, Event: ev}, nil
}

func (s *Server) UnreadCounts(ctx context.Context, in *gochatv1.UnreadCountsRequest) (*gochatv1.UnreadCountsResponse, error) {
	if err := checkIDs("user_ids", in.UserIds); err != nil {
		return nil, err
	}
	counts, err := s.store.UnreadCounts(ctx, in.UserIds)
	if err != nil {
		return nil, err
	}
	out := &gochatv1.UnreadCountsResponse{}
	for _, u := range in.UserIds {
		out.Counts = append(out.Counts, &gochatv1.UnreadCount{UserId: u, Unread: counts[u]})
	}
	return out, nil
}

func checkSessions(sessions []*gochatv1.Session) error {
	if len(sessions) > MaxBatchIDs {
		return invalid("%d sessions in one call, at most %d are allowed", len(sessions), MaxBatchIDs)
	}
	for _, s := range sessions {
		if s.UserId == "" || s.SessionId == "" || s.Gateway == "" {
			return invalid("a session needs user_id, session_id and gateway")
		}
	}
	return nil
}

func (s *Server) RegisterSessions(ctx context.Context, in *gochatv1.RegisterSessionsRequest) (*gochatv1.RegisterSessionsResponse, error) {
	if err := checkSessions(in.Sessions); err != nil {
		return nil, err
	}
	if in.TtlMs < 1000 {
		return nil, invalid("ttl_ms must be at least 1000")
	}
	sessions := in.Sessions
	var unknown []string
	if in.CheckUsers {
		var err error
		if sessions, unknown, err = s.existingUsersOnly(ctx, sessions); err != nil {
			return nil, err
		}
	}
	var came []string
	if len(sessions) > 0 {
		var err error
		came, err = s.presence.Register(ctx, sessions, time.Duration(in.TtlMs)*time.Millisecond)
		if err != nil && !s.changeLogOnly(err) {
			return nil, apierror.New(apierror.Unavailable, "presence store unavailable: %v", err)
		}
	}
	return &gochatv1.RegisterSessionsResponse{CameOnline: came, UnknownUsers: unknown}, nil
}

// existingUsersOnly keeps the sessions of users who exist, and names the
// users who do not: one query for a whole batch of connects, which is what
// lets gateways greet users from their tokens and still refuse deleted ones.
func (s *Server) existingUsersOnly(ctx context.Context, sessions []*gochatv1.Session) ([]*gochatv1.Session, []string, error) {
	ids := make([]string, 0, len(sessions))
	seen := make(map[string]bool, len(sessions))
	for _, ss := range sessions {
		if !seen[ss.UserId] {
			seen[ss.UserId] = true
			ids = append(ids, ss.UserId)
		}
	}
	missing, err := s.store.MissingUsers(ctx, ids)
	if err != nil {
		return nil, nil, apierror.New(apierror.Unavailable, "user store unavailable: %v", err)
	}
	if len(missing) == 0 {
		return sessions, nil, nil
	}
	gone := make(map[string]bool, len(missing))
	for _, id := range missing {
		gone[id] = true
	}
	kept := make([]*gochatv1.Session, 0, len(sessions))
	for _, ss := range sessions {
		if !gone[ss.UserId] {
			kept = append(kept, ss)
		}
	}
	return kept, missing, nil
}

func (s *Server) UnregisterSessions(ctx context.Context, in *gochatv1.UnregisterSessionsRequest) (*gochatv1.UnregisterSessionsResponse, error) {
	if err := checkSessions(in.Sessions); err != nil {
		return nil, err
	}
	gone, err := s.presence.Unregister(ctx, in.Sessions)
	if err != nil && !s.changeLogOnly(err) {
		return nil, apierror.New(apierror.Unavailable, "presence store unavailable: %v", err)
	}
	return &gochatv1.UnregisterSessionsResponse{WentOffline: gone}, nil
}

// changeLogOnly reports (and logs) a presence write that stood but whose
// change log entry failed: answering an error would make the gateway write
// again, which finds nothing to change and so records nothing either.
func (s *Server) changeLogOnly(err error) bool {
	if !errors.Is(err, ErrChangeLog) {
		return false
	}
	s.log.Warn("presence changed, but its change log entry failed: routes of large groups see it at their expiry", "err", err)
	return true
}

func (s *Server) GetPresence(ctx context.Context, in *gochatv1.GetPresenceRequest) (*gochatv1.GetPresenceResponse, error) {
	if err := checkIDs("user_ids", in.UserIds); err != nil {
		return nil, err
	}
	sessions, gen, err := s.presence.Lookup(ctx, in.UserIds)
	if err != nil {
		return nil, apierror.New(apierror.Unavailable, "presence store unavailable: %v", err)
	}
	var users []*gochatv1.UserPresence
	if !in.SessionsOnly {
		if users, err = s.presence.Status(ctx, in.UserIds); err != nil {
			return nil, apierror.New(apierror.Unavailable, "presence store unavailable: %v", err)
		}
	}
	sessions, err = s.withoutDeadGateways(ctx, sessions, users)
	if err != nil {
		return nil, apierror.New(apierror.Unavailable, "presence store unavailable: %v", err)
	}
	return &gochatv1.GetPresenceResponse{Sessions: sessions, Users: users, ChangeGen: gen}, nil
}

// MaxPresenceChanges is the most changes one GetPresenceChanges answers.
const MaxPresenceChanges = 10000

func (s *Server) GetPresenceChanges(ctx context.Context, in *gochatv1.GetPresenceChangesRequest) (*gochatv1.GetPresenceChangesResponse, error) {
	if in.AfterGen < 0 {
		return nil, invalid("after_gen must be 0 or more, got %d", in.AfterGen)
	}
	if in.Limit < 1 || in.Limit > MaxPresenceChanges {
		return nil, invalid("limit must be 1 to %d, got %d", MaxPresenceChanges, in.Limit)
	}
	c, err := s.presence.Changes(ctx, in.AfterGen, int(in.Limit))
	if err != nil {
		return nil, apierror.New(apierror.Unavailable, "presence store unavailable: %v", err)
	}
	return &gochatv1.GetPresenceChangesResponse{Changes: c.Changes, Gen: c.Gen, Complete: c.Complete}, nil
}

// withoutDeadGateways drops the sessions held by gateways whose liveness
// lapsed (killed or frozen: their sessions' own TTL is far longer), so that
// im-task does not dial them and counts their users offline; a user left
// with no session is marked offline in users.
func (s *Server) withoutDeadGateways(ctx context.Context, sessions []*gochatv1.Session, users []*gochatv1.UserPresence) ([]*gochatv1.Session, error) {
	seen := map[string]bool{}
	var gws []string
	for _, ss := range sessions {
		if !seen[ss.Gateway] {
			seen[ss.Gateway] = true
			gws = append(gws, ss.Gateway)
		}
	}
	dead, err := s.presence.DeadGateways(ctx, gws)
	if err != nil || len(dead) == 0 {
		return sessions, err
	}
	kept := sessions[:0]
	online := map[string]bool{}
	for _, ss := range sessions {
		if !dead[ss.Gateway] {
			kept = append(kept, ss)
			online[ss.UserId] = true
		}
	}
	for _, u := range users {
		u.Online = u.Online && online[u.UserId]
	}
	return kept, nil
}

func (s *Server) GatewayAlive(ctx context.Context, in *gochatv1.GatewayAliveRequest) (*gochatv1.GatewayAliveResponse, error) {
	if in.Gateway == "" || len(in.Gateway) > 255 {
		return nil, invalid("gateway must be 1 to 255 bytes")
	}
	if in.TtlMs < 0 || in.TtlMs > 10*60*1000 {
		return nil, invalid("ttl_ms must be 0 to 600000, got %d", in.TtlMs)
	}
	known, err := s.presence.GatewayAlive(ctx, in.Gateway, time.Duration(in.TtlMs)*time.Millisecond)
	if err != nil {
		return nil, apierror.New(apierror.Unavailable, "presence store unavailable: %v", err)
	}
	return &gochatv1.GatewayAliveResponse{Known: known}, nil
}

func (s *Server) AckDispatched(ctx context.Context, in *gochatv1.AckDispatchedRequest) (*gochatv1.AckDispatchedResponse, error) {
	if err := checkIDs("message_ids", in.MessageIds); err != nil {
		return nil, err
	}
	if len(in.EventIds) > MaxBatchIDs {
		return nil, invalid("event_ids has %d ids, at most %d are allowed", len(in.EventIds), MaxBatchIDs)
	}
	events, err := eventIDs(in.EventIds)
	if err != nil {
		return nil, err
	}
	if len(in.MessageIds) > 0 {
		if err := s.store.AckDispatched(ctx, in.MessageIds); err != nil {
			return nil, err
		}
	}
	if len(events) > 0 {
		if err := s.store.AckEvents(ctx, events); err != nil {
			return nil, err
		}
	}
	return &gochatv1.AckDispatchedResponse{}, nil
}

func (s *Server) ListUndispatched(ctx context.Context, in *gochatv1.ListUndispatchedRequest) (*gochatv1.ListUndispatchedResponse, error) {
	if in.StoredBeforeMs <= 0 {
		return nil, invalid("stored_before_ms is required")
	}
	msgs, err := s.store.ListUndispatched(ctx, in.StoredBeforeMs, pageLimit(in.Limit), s.outboxLease)
	if err != nil {
		return nil, err
	}
	events, err := s.store.ListUndispatchedEvents(ctx, in.StoredBeforeMs, pageLimit(in.Limit), s.outboxLease)
	if err != nil {
		return nil, err
	}
	return &gochatv1.ListUndispatchedResponse{Messages: msgs, Events: events}, nil
}
