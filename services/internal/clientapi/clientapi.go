// Package clientapi is the JSON of the client API (docs/protocol.md): the
// objects, the WebSocket frames and their conversion from the internal protos.
// im-gateway and im-task both speak it, so a pushed frame is encoded once in
// im-task and written as is by the gateway to every session.
package clientapi

import (
	"bytes"
	"encoding/json"
	"time"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/apierror"
)

// Time is Unix milliseconds rendered as RFC 3339 UTC with milliseconds.
type Time int64

const timeLayout = "2006-01-02T15:04:05.000Z07:00"

// MarshalJSON renders "2026-11-27T08:00:00.123Z".
func (t Time) MarshalJSON() ([]byte, error) {
	return []byte(`"` + time.UnixMilli(int64(t)).UTC().Format(timeLayout) + `"`), nil
}

// UnmarshalJSON parses an RFC 3339 time (clients and tests read what we wrote).
func (t *Time) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	p, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return err
	}
	*t = Time(p.UnixMilli())
	return nil
}

// User is the client API's User object.
type User struct {
	ID        string `json:"id"`
	Username  string `json:"username"`
	Nickname  string `json:"nickname"`
	Guest     bool   `json:"guest"`
	CreatedAt Time   `json:"created_at"`
}

// Message is the client API's Message object.
type Message struct {
	ID             string `json:"id"`
	ConversationID string `json:"conversation_id"`
	Seq            int64  `json:"seq"`
	SenderID       string `json:"sender_id"`
	ClientMsgID    string `json:"client_msg_id"`
	ContentType    string `json:"content_type"`
	Content        string `json:"content"`
	CreatedAt      Time   `json:"created_at"`
}

// Member is one entry of Conversation.members. ReadSeq (an addition to the
// contract) is how far that member has read: clients show read receipts with it.
type Member struct {
	UserID  string `json:"user_id"`
	Role    string `json:"role"`
	ReadSeq int64  `json:"read_seq"`
	// Presence (v1.1) is set on the members of direct conversations only;
	// nil leaves its fields out.
	*MemberPresence
}

// Conversation is the client API's Conversation object.
type Conversation struct {
	ID          string   `json:"id"`
	Type        string   `json:"type"`
	Name        string   `json:"name"`
	OwnerID     string   `json:"owner_id"`
	Members     []Member `json:"members"`
	MaxSeq      int64    `json:"max_seq"`
	ReadSeq     int64    `json:"read_seq"`
	Unread      int64    `json:"unread"`
	LastMessage *Message `json:"last_message"`
	CreatedAt   Time     `json:"created_at"`
}

// UserFrom converts a proto User.
func UserFrom(u *gochatv1.User) User {
	return User{ID: u.Id, Username: u.Username, Nickname: u.Nickname, Guest: u.Guest, CreatedAt: Time(u.CreatedAtMs)}
}

// MessageFrom converts a proto Message.
func MessageFrom(m *gochatv1.Message) Message {
	return Message{
		ID: m.Id, ConversationID: m.ConversationId, Seq: m.Seq, SenderID: m.SenderId, ClientMsgID: m.ClientMsgId,
		ContentType: m.ContentType, Content: m.Content, CreatedAt: Time(m.CreatedAtMs),
	}
}

// MessagesFrom converts a list, never returning nil (JSON [] rather than null).
func MessagesFrom(ms []*gochatv1.Message) []Message {
	out := make([]Message, len(ms))
	for i, m := range ms {
		out[i] = MessageFrom(m)
	}
	return out
}

var roles = map[gochatv1.Role]string{
	gochatv1.Role_ROLE_OWNER: "owner", gochatv1.Role_ROLE_ADMIN: "admin", gochatv1.Role_ROLE_MEMBER: "member",
}

// ConversationFrom converts a proto Conversation as seen by its viewer.
func ConversationFrom(c *gochatv1.Conversation) Conversation {
	out := Conversation{
		ID: c.Id, Type: "group", Name: c.Name, OwnerID: c.OwnerId, Members: make([]Member, len(c.Members)),
		MaxSeq: c.MaxSeq, ReadSeq: c.ReadSeq, Unread: max(c.MaxSeq-c.ReadSeq, 0), CreatedAt: Time(c.CreatedAtMs),
	}
	if c.Type == gochatv1.ConversationType_CONVERSATION_TYPE_DIRECT {
		out.Type = "direct"
	}
	for i, m := range c.Members {
		out.Members[i] = Member{UserID: m.UserId, Role: roles[m.Role], ReadSeq: m.ReadSeq}
	}
	if c.LastMessage != nil {
		m := MessageFrom(c.LastMessage)
		out.LastMessage = &m
	}
	return out
}

// Frame types, both directions.
const (
	TypeHello     = "hello"
	TypeSend      = "send"
	TypeAck       = "ack"
	TypeSync      = "sync"
	TypeRead      = "read"
	TypePing      = "ping"
	TypePong      = "pong"
	TypeMessage   = "message"
	TypeEvent     = "event"
	TypeReconnect = "reconnect"
	TypeError     = "error"
	TypeResync    = "resync"
)

// ResyncData tells a client to sync a conversation from the last seq it
// holds: the server could not push it something it should have.
type ResyncData struct {
	ConversationID string `json:"conversation_id"`
}

// InFrame is a frame from a client; Data is decoded once Type is known.
type InFrame struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

// DecodeInFrame decodes a client's text frame. Bad input is an
// invalid_argument error that says what is wrong; it never panics.
func DecodeInFrame(payload []byte) (InFrame, *apierror.Error) {
	var f InFrame
	if err := json.Unmarshal(payload, &f); err != nil {
		return InFrame{}, apierror.New(apierror.InvalidArgument, "malformed JSON frame: %v", err)
	}
	if f.Type == "" {
		return InFrame{}, apierror.New(apierror.InvalidArgument, "frame has no type")
	}
	return f, nil
}

// SendData is the data of a client "send".
type SendData struct {
	ClientMsgID    string `json:"client_msg_id"`
	ConversationID string `json:"conversation_id"`
	ToUserID       string `json:"to_user_id"`
	Content        string `json:"content"`
	ContentType    string `json:"content_type"`
}

// SyncData is the data of a client "sync". AfterSeq is a pointer so that a
// missing after_seq is told apart from 0.
type SyncData struct {
	ConversationID string `json:"conversation_id"`
	AfterSeq       *int64 `json:"after_seq"`
	Limit          int32  `json:"limit"`
}

// ReadData is the data of a "read", both directions.
type ReadData struct {
	ConversationID string `json:"conversation_id"`
	UserID         string `json:"user_id,omitempty"`
	Seq            *int64 `json:"seq"`
}

// Hello is the first frame a client gets.
type Hello struct {
	User        User   `json:"user"`
	SessionID   string `json:"session_id"`
	HeartbeatMs int64  `json:"heartbeat_ms"`
}

// Ack answers a stored send.
type Ack struct {
	ClientMsgID string  `json:"client_msg_id"`
	Message     Message `json:"message"`
}

// SyncResult answers a sync.
type SyncResult struct {
	ConversationID string    `json:"conversation_id"`
	Messages       []Message `json:"messages"`
	HasMore        bool      `json:"has_more"`
}

// Event tells members of a group change.
type Event struct {
	Kind           string   `json:"kind"`
	ConversationID string   `json:"conversation_id"`
	UserIDs        []string `json:"user_ids"`
	ActorID        string   `json:"actor_id"`
}

// Reconnect asks a client to come back later, to another gateway.
type Reconnect struct {
	AfterMs int64  `json:"after_ms"`
	Reason  string `json:"reason"`
}

// ErrorData is the data of an "error" frame and the body of HTTP errors.
type ErrorData struct {
	Code        string `json:"code"`
	Message     string `json:"message"`
	ClientMsgID string `json:"client_msg_id,omitempty"`
}

// EventKinds maps the proto kinds to the contract's names.
var EventKinds = map[gochatv1.GroupEventKind]string{
	gochatv1.GroupEventKind_GROUP_EVENT_KIND_GROUP_CREATED:  "group_created",
	gochatv1.GroupEventKind_GROUP_EVENT_KIND_MEMBER_ADDED:   "member_added",
	gochatv1.GroupEventKind_GROUP_EVENT_KIND_MEMBER_REMOVED: "member_removed",
	gochatv1.GroupEventKind_GROUP_EVENT_KIND_MEMBER_LEFT:    "member_left",
}

type outFrame struct {
	Type string `json:"type"`
	Data any    `json:"data"`
}

// Frame encodes one server-to-client frame.
func Frame(typ string, data any) []byte {
	b, err := Marshal(outFrame{Type: typ, Data: data})
	if err != nil {
		// Only our own types reach here; they always encode.
		panic("clientapi: encode " + typ + " frame: " + err.Error())
	}
	return b
}

// Marshal encodes v as JSON without HTML escaping: frames are not HTML, and
// escaping turns each '<', '>' or '&' of a message into six bytes, so a page
// of such messages would be six times its content.
func Marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// CapMessages keeps messages while their encoded size stays within maxBytes,
// and always at least one. With fromEnd it keeps the newest (a page read
// backwards with before_seq), otherwise the oldest. cut reports whether any
// were left out: the answer's has_more must then be true.
func CapMessages(msgs []Message, maxBytes int, fromEnd bool) (kept []Message, cut bool) {
	total := 0
	n := 0
	for i := range msgs {
		m := msgs[i]
		if fromEnd {
			m = msgs[len(msgs)-1-i]
		}
		b, err := Marshal(m)
		if err != nil {
			break
		}
		total += len(b) + 1
		if n > 0 && total > maxBytes {
			break
		}
		n++
	}
	if n == len(msgs) {
		return msgs, false
	}
	if fromEnd {
		return msgs[len(msgs)-n:], true
	}
	return msgs[:n], true
}

// ErrorFrame encodes an "error" frame.
func ErrorFrame(code, message, clientMsgID string) []byte {
	return Frame(TypeError, ErrorData{Code: code, Message: message, ClientMsgID: clientMsgID})
}
