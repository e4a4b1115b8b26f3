package gateway

import (
	"context"
	"encoding/json"
	"time"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/apierror"
	"github.com/gochat/gochat/services/internal/clientapi"
	"github.com/gochat/gochat/services/internal/ids"
)

const (
	// typingEvery is the least time between two relayed typing frames of one
	// connection in one conversation; more are dropped without an answer.
	typingEvery = time.Second
	// maxTypingConvs bounds the per-connection memory of the limit.
	maxTypingConvs = 64
)

// allowTyping applies the per-conversation limit. It runs on the session's
// reading goroutine, the only one that touches typingAt.
func (s *session) allowTyping(conv string, now time.Time) bool {
	if last, ok := s.typingAt[conv]; ok && now.Sub(last) < typingEvery {
		return false
	}
	if s.typingAt == nil || len(s.typingAt) >= maxTypingConvs {
		fresh := make(map[string]time.Time, len(s.typingAt))
		for c, t := range s.typingAt {
			if now.Sub(t) < typingEvery {
				fresh[c] = t
			}
		}
		s.typingAt = fresh
		if len(s.typingAt) >= maxTypingConvs {
			return false
		}
	}
	s.typingAt[conv] = now
	return true
}

// handleTyping relays "typing" to the conversation's other members, straight
// to their sessions: it is ephemeral, never stored and never sent through Kafka.
// handleTyping validates on the reader and relays off it, through the
// session's call window, like every frame that needs a backend.
func (g *Gateway) handleTyping(s *session, raw json.RawMessage) error {
	var d clientapi.TypingData
	if e := decodeData(raw, &d); e != nil {
		return g.clientError(s, e, "")
	}
	if d.ConversationID == "" {
		return g.clientError(s, apierror.New(apierror.InvalidArgument, "typing needs conversation_id"), "")
	}
	notFound := apierror.New(apierror.NotFound, "conversation not found")
	if !ids.Valid(d.ConversationID) {
		return g.clientError(s, notFound, "")
	}
	if !s.allowTyping(d.ConversationID, time.Now()) {
		return nil
	}
	return g.call(s, "", func(ctx context.Context) error { return g.relayTyping(ctx, s, d) })
}

func (g *Gateway) relayTyping(ctx context.Context, s *session, d clientapi.TypingData) error {
	notFound := apierror.New(apierror.NotFound, "conversation not found")
	r, err := g.repo.GetMembers(ctx, &gochatv1.GetMembersRequest{ConversationIds: []string{d.ConversationID}})
	if err != nil {
		return g.clientError(s, apierror.From(err), "")
	}
	var others []string
	member := false
	for _, l := range r.Lists {
		for _, m := range l.Members {
			if m.UserId == s.userID {
				member = true
			} else {
				others = append(others, m.UserId)
			}
		}
	}
	if !member {
		return g.clientError(s, notFound, "")
	}
	frame := clientapi.Frame(clientapi.TypeTyping, clientapi.TypingData{ConversationID: d.ConversationID, UserID: s.userID})
	if _, err := g.relay(ctx, others, frame); err != nil {
		// Best effort: the sender has nothing to retry, the log says what failed.
		g.log.Warn("relay typing", "conversation_id", d.ConversationID, "err", err)
	}
	return nil
}
