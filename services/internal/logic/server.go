// Package logic is im-logic: accounts and tokens, conversations and groups,
// and the send path, between the gateway and im-repo.
package logic

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/apierror"
	"github.com/gochat/gochat/services/internal/authtoken"
	"github.com/gochat/gochat/services/internal/ids"
)

var sends = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "gochat_logic_sends_total", Help: "Send calls by result: stored, duplicate or the error code.",
}, []string{"result"})

// Publisher takes dispatch events for Kafka; done, if not nil, runs once
// Kafka has one (nil) or the producer gave up on it. SendNow sends what was
// published without waiting for more to batch it with.
type Publisher interface {
	Publish(ev *gochatv1.DispatchEvent, done func(error))
	SendNow()
}

// Config is im-logic's own settings.
type Config struct {
	MaxContentBytes int
	MaxGroupMembers int
	// RelayAfter is how long a stored message may wait in the outbox before
	// the relay publishes it again.
	RelayAfter time.Duration
}

// Server implements gochatv1.LogicServiceServer.
type Server struct {
	gochatv1.UnimplementedLogicServiceServer
	repo   gochatv1.RepoServiceClient
	keys   *authtoken.Keys
	pub    Publisher
	cfg    Config
	log    *slog.Logger
	now    func() time.Time
	outbox *outbox
}

// NewServer returns im-logic over an im-repo client.
func NewServer(repo gochatv1.RepoServiceClient, keys *authtoken.Keys, pub Publisher, cfg Config, log *slog.Logger) *Server {
	dummyHash() // now, so that the first login for an unknown name takes no longer than the next
	return &Server{repo: repo, keys: keys, pub: pub, cfg: cfg, log: log, now: time.Now, outbox: newOutbox(repo, pub, cfg.RelayAfter, log)}
}

// Run clears and relays the dispatch outbox until ctx ends.
func (s *Server) Run(ctx context.Context) { s.outbox.run(ctx) }

func (s *Server) auth(u *gochatv1.User) (*gochatv1.AuthResponse, error) {
	// The profile rides in the token so that a gateway greets the user at
	// connect without looking them up.
	profile := &authtoken.Profile{Username: u.Username, Nickname: u.Nickname, CreatedAtMs: u.CreatedAtMs}
	tok, exp, err := s.keys.Issue(u.Id, u.Guest, profile, s.now())
	if err != nil {
		return nil, err
	}
	return &gochatv1.AuthResponse{User: u, Token: tok, ExpiresAtMs: exp.UnixMilli()}, nil
}

func (s *Server) Register(ctx context.Context, in *gochatv1.RegisterRequest) (*gochatv1.AuthResponse, error) {
	if err := validateUsername(in.Username); err != nil {
		return nil, err
	}
	if err := validatePassword(in.Password); err != nil {
		return nil, err
	}
	if err := validateText("nickname", in.Nickname, maxNickname, false); err != nil {
		return nil, err
	}
	nick := in.Nickname
	if nick == "" {
		nick = in.Username
	}
	var (
		hash string
		err  error
	)
	if serr := withHashSlot(ctx, func() { hash, err = hashPassword(in.Password) }); serr != nil {
		return nil, serr
	}
	if err != nil {
		return nil, err
	}
	r, err := s.repo.CreateUser(ctx, &gochatv1.CreateUserRequest{Username: in.Username, PasswordHash: hash, Nickname: nick})
	if err != nil {
		return nil, err
	}
	s.log.Info("user registered", "user_id", r.User.Id)
	return s.auth(r.User)
}

var errWrongLogin = apierror.New(apierror.Unauthenticated, "wrong username or password")

func (s *Server) Login(ctx context.Context, in *gochatv1.LoginRequest) (*gochatv1.AuthResponse, error) {
	if in.Username == "" || in.Password == "" || len(in.Password) > maxPassword || len(in.Username) > 32 {
		return nil, errWrongLogin
	}
	r, err := s.repo.GetCredentials(ctx, &gochatv1.GetCredentialsRequest{Username: in.Username})
	if apierror.IsCode(err, apierror.NotFound) {
		_ = withHashSlot(ctx, func() { _, _ = checkPassword(dummyHash(), in.Password) })
		return nil, errWrongLogin
	}
	if err != nil {
		return nil, err
	}
	if r.User.Guest || r.PasswordHash == "" {
		_ = withHashSlot(ctx, func() { _, _ = checkPassword(dummyHash(), in.Password) })
		return nil, errWrongLogin
	}
	var ok bool
	if serr := withHashSlot(ctx, func() { ok, err = checkPassword(r.PasswordHash, in.Password) }); serr != nil {
		return nil, serr
	}
	if err != nil {
		return nil, fmt.Errorf("check password of user %s: %w", r.User.Id, err)
	}
	if !ok {
		return nil, errWrongLogin
	}
	return s.auth(r.User)
}

func (s *Server) Guest(ctx context.Context, in *gochatv1.GuestRequest) (*gochatv1.AuthResponse, error) {
	if err := validateText("nickname", in.Nickname, maxNickname, false); err != nil {
		return nil, err
	}
	for attempt := 0; attempt < 3; attempt++ {
		suffix := randomSuffix(10)
		nick := in.Nickname
		if nick == "" {
			nick = "Guest " + suffix[:4]
		}
		r, err := s.repo.CreateUser(ctx, &gochatv1.CreateUserRequest{Username: "guest-" + suffix, Nickname: nick, Guest: true})
		if apierror.IsCode(err, apierror.AlreadyExists) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return s.auth(r.User)
	}
	return nil, apierror.New(apierror.Unavailable, "could not pick a guest name, try again")
}

func randomSuffix(n int) string {
	const alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

func (s *Server) GetUser(ctx context.Context, in *gochatv1.GetUserRequest) (*gochatv1.GetUserResponse, error) {
	return s.repo.GetUser(ctx, in)
}

func (s *Server) GetOrCreateDirect(ctx context.Context, in *gochatv1.DirectRequest) (*gochatv1.Conversation, error) {
	if err := validateUserIDs("user_id", []string{in.PeerId}, false); err != nil {
		return nil, err
	}
	r, err := s.repo.GetOrCreateDirect(ctx, &gochatv1.GetOrCreateDirectRequest{UserId: in.CallerId, PeerId: in.PeerId})
	if err != nil {
		return nil, err
	}
	return r.Conversation, nil
}

// publishEvent publishes the event im-repo recorded with a change; the
// outbox relay publishes it again if this publish is lost.
func (s *Server) publishEvent(e *gochatv1.OutboxEvent) {
	// An event behind a lost one of its conversation waits for the relay,
	// which publishes them in order: published now, it would overtake it.
	if e != nil && !e.Behind {
		s.outbox.publishEvent(e)
	}
}

func (s *Server) CreateGroup(ctx context.Context, in *gochatv1.GroupRequest) (*gochatv1.Conversation, error) {
	if err := validateText("name", in.Name, maxGroupName, true); err != nil {
		return nil, err
	}
	if err := validateUserIDs("member_ids", in.MemberIds, true); err != nil {
		return nil, err
	}
	if len(in.MemberIds)+1 > s.cfg.MaxGroupMembers {
		return nil, invalid("a group has at most %d members", s.cfg.MaxGroupMembers)
	}
	r, err := s.repo.CreateGroup(ctx, &gochatv1.CreateGroupRequest{Name: in.Name, OwnerId: in.CallerId, MemberIds: in.MemberIds})
	if err != nil {
		return nil, err
	}
	s.publishEvent(r.Event)
	return r.Conversation, nil
}

func (s *Server) AddMembers(ctx context.Context, in *gochatv1.MembersRequest) (*gochatv1.Conversation, error) {
	if err := validateUserIDs("user_ids", in.UserIds, false); err != nil {
		return nil, err
	}
	cur, err := s.repo.GetMembers(ctx, &gochatv1.GetMembersRequest{ConversationIds: []string{in.ConversationId}})
	if err == nil && len(cur.Lists) == 1 && len(cur.Lists[0].Members)+len(in.UserIds) > s.cfg.MaxGroupMembers {
		return nil, invalid("a group has at most %d members", s.cfg.MaxGroupMembers)
	}
	r, err := s.repo.AddMembers(ctx, &gochatv1.AddMembersRequest{ConversationId: in.ConversationId, ActorId: in.CallerId, UserIds: in.UserIds})
	if err != nil {
		return nil, err
	}
	s.publishEvent(r.Event)
	return r.Conversation, nil
}

func (s *Server) RemoveMember(ctx context.Context, in *gochatv1.MemberRequest) (*gochatv1.Empty, error) {
	if in.UserId == in.CallerId {
		return s.LeaveGroup(ctx, &gochatv1.LeaveRequest{CallerId: in.CallerId, ConversationId: in.ConversationId})
	}
	if err := validateUserIDs("user_id", []string{in.UserId}, false); err != nil {
		return nil, err
	}
	r, err := s.repo.RemoveMember(ctx, &gochatv1.RemoveMemberRequest{ConversationId: in.ConversationId, ActorId: in.CallerId, UserId: in.UserId})
	if err != nil {
		return nil, err
	}
	s.publishEvent(r.Event)
	return &gochatv1.Empty{}, nil
}

func (s *Server) LeaveGroup(ctx context.Context, in *gochatv1.LeaveRequest) (*gochatv1.Empty, error) {
	r, err := s.repo.RemoveMember(ctx, &gochatv1.RemoveMemberRequest{ConversationId: in.ConversationId, ActorId: in.CallerId, UserId: in.CallerId, Leave: true})
	if err != nil {
		return nil, err
	}
	s.publishEvent(r.Event)
	return &gochatv1.Empty{}, nil
}

func (s *Server) ListConversations(ctx context.Context, in *gochatv1.ListConversationsRequest) (*gochatv1.ListConversationsResponse, error) {
	return s.repo.ListConversations(ctx, in)
}

func (s *Server) GetConversation(ctx context.Context, in *gochatv1.GetConversationRequest) (*gochatv1.Conversation, error) {
	r, err := s.repo.GetConversation(ctx, in)
	if err != nil {
		return nil, err
	}
	return r.Conversation, nil
}

func (s *Server) ListMessages(ctx context.Context, in *gochatv1.ListMessagesRequest) (*gochatv1.ListMessagesResponse, error) {
	if in.ViewerId == "" {
		return nil, invalid("viewer_id is required")
	}
	return s.repo.ListMessages(ctx, in)
}

// Send stores a message and answers once it is durable; the push to the
// members goes through Kafka after the answer.
func (s *Server) Send(ctx context.Context, in *gochatv1.SendRequest) (*gochatv1.SendResponse, error) {
	resp, err := s.send(ctx, in)
	countSend(resp, err)
	return resp, err
}

func countSend(resp *gochatv1.SendResponse, err error) {
	switch {
	case err != nil:
		sends.WithLabelValues(string(apierror.From(err).Code)).Inc()
	case resp.Duplicate:
		sends.WithLabelValues("duplicate").Inc()
	default:
		sends.WithLabelValues("stored").Inc()
	}
}

func (s *Server) send(ctx context.Context, in *gochatv1.SendRequest) (*gochatv1.SendResponse, error) {
	req, err := s.toStore(ctx, in)
	if err != nil {
		return nil, err
	}
	r, err := s.repo.StoreMessage(ctx, req)
	if err != nil {
		return nil, err
	}
	resp := s.sent(r, in.SessionId)
	s.outbox.pub.SendNow()
	return resp, nil
}

// toStore checks a send and names its conversation, creating a direct one
// on a first message to a user.
func (s *Server) toStore(ctx context.Context, in *gochatv1.SendRequest) (*gochatv1.StoreMessageRequest, error) {
	if in.ContentType == "" {
		in.ContentType = "text"
	}
	if err := validateSend(in.ClientMsgId, in.ContentType, in.Content, s.cfg.MaxContentBytes); err != nil {
		return nil, err
	}
	convID := in.ConversationId
	switch {
	case convID != "" && in.ToUserId != "":
		return nil, invalid("give conversation_id or to_user_id, not both")
	case convID == "" && in.ToUserId == "":
		return nil, invalid("conversation_id or to_user_id is required")
	case convID == "":
		if !ids.Valid(in.ToUserId) {
			return nil, apierror.New(apierror.NotFound, "user not found")
		}
		r, err := s.repo.GetOrCreateDirect(ctx, &gochatv1.GetOrCreateDirectRequest{UserId: in.CallerId, PeerId: in.ToUserId})
		if err != nil {
			return nil, err
		}
		convID = r.Conversation.Id
	}
	return &gochatv1.StoreMessageRequest{
		ConversationId: convID, SenderId: in.CallerId, ClientMsgId: in.ClientMsgId,
		ContentType: in.ContentType, Content: in.Content,
	}, nil
}

// sent publishes a newly stored message and is the send's answer.
func (s *Server) sent(r *gochatv1.StoreMessageResponse, sessionID string) *gochatv1.SendResponse {
	if !r.Duplicate {
		s.outbox.publish(r.Message, sessionID)
	}
	return &gochatv1.SendResponse{Message: r.Message, Duplicate: r.Duplicate}
}

// MaxSendBatch bounds the sends of one SendBatch call.
const MaxSendBatch = 1000

// SendBatch stores the sends it can in one im-repo call. A send that fails
// its checks, or whose conversation cannot be found, fails alone.
func (s *Server) SendBatch(ctx context.Context, in *gochatv1.SendBatchRequest) (*gochatv1.SendBatchResponse, error) {
	if n := len(in.Sends); n == 0 || n > MaxSendBatch {
		return nil, invalid("sends has %d items, 1 to %d are allowed", n, MaxSendBatch)
	}
	out := make([]*gochatv1.SendResult, len(in.Sends))
	fail := func(i int, err error) {
		countSend(nil, err)
		if apierror.From(err).Code == apierror.Internal {
			s.log.Error("send failed", "conversation_id", in.Sends[i].ConversationId, "err", err)
		}
		out[i] = &gochatv1.SendResult{Error: apierror.Item(err)}
	}
	var store []*gochatv1.StoreMessageRequest
	var at []int
	for i, send := range in.Sends {
		req, err := s.toStore(ctx, send)
		if err != nil {
			fail(i, err)
			continue
		}
		store = append(store, req)
		at = append(at, i)
	}
	if len(store) == 0 {
		return &gochatv1.SendBatchResponse{Results: out}, nil
	}
	r, err := s.repo.StoreMessages(ctx, &gochatv1.StoreMessagesRequest{Messages: store})
	if err == nil && len(r.Results) != len(store) {
		err = fmt.Errorf("im-repo answered %d of %d messages", len(r.Results), len(store))
	}
	for j, i := range at {
		switch {
		case err != nil:
			fail(i, err)
		case r.Results[j].Error != nil:
			fail(i, apierror.FromItem(r.Results[j].Error))
		case r.Results[j].Stored.GetMessage() == nil:
			fail(i, fmt.Errorf("im-repo answered message %d with neither a message nor an error", j))
		default:
			resp := s.sent(r.Results[j].Stored, in.Sends[i].SessionId)
			countSend(resp, nil)
			out[i] = &gochatv1.SendResult{Sent: resp}
		}
	}
	if err == nil {
		// The batch's messages are all published: nothing is coming to
		// share their produce request.
		s.outbox.pub.SendNow()
	}
	return &gochatv1.SendBatchResponse{Results: out}, nil
}

func (s *Server) MarkRead(ctx context.Context, in *gochatv1.MarkReadRequest) (*gochatv1.Empty, error) {
	if in.Seq < 0 {
		return nil, invalid("seq cannot be negative")
	}
	r, err := s.repo.UpdateReadSeq(ctx, &gochatv1.UpdateReadSeqRequest{ConversationId: in.ConversationId, UserId: in.CallerId, Seq: in.Seq, OriginSessionId: in.SessionId})
	if err != nil {
		return nil, err
	}
	s.publishEvent(r.Event)
	return &gochatv1.Empty{}, nil
}
