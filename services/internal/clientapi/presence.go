package clientapi

import gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"

// Frame types of the v1.1 additions (docs/protocol.md): presence and typing.
const (
	TypeTyping   = "typing"
	TypePresence = "presence"
)

// TypingData is a "typing" frame: from a client only conversation_id, from
// the server also the user who is typing.
type TypingData struct {
	ConversationID string `json:"conversation_id"`
	UserID         string `json:"user_id,omitempty"`
}

// Presence is a "presence" frame, and the presence half of PresentUser.
// LastSeenAt is null when the user was never seen.
type Presence struct {
	UserID     string `json:"user_id"`
	Online     bool   `json:"online"`
	LastSeenAt *Time  `json:"last_seen_at"`
}

// PresenceFrom converts a proto UserPresence.
func PresenceFrom(p *gochatv1.UserPresence) Presence {
	out := Presence{UserID: p.UserId, Online: p.Online}
	if p.LastSeenMs > 0 {
		t := Time(p.LastSeenMs)
		out.LastSeenAt = &t
	}
	return out
}

// PresentUser is a User with its presence: the answer of GET /v1/users/{id}
// and GET /v1/users?username=.
type PresentUser struct {
	User
	Online     bool  `json:"online"`
	LastSeenAt *Time `json:"last_seen_at"`
}

// MemberPresence is the presence of a member of a direct conversation (v1.1).
type MemberPresence struct {
	Online     bool  `json:"online"`
	LastSeenAt *Time `json:"last_seen_at"`
}
