package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/apierror"
	"github.com/gochat/gochat/services/internal/clientapi"
)

// maxBody bounds every JSON request body.
const maxBody = 64 << 10

func (g *Gateway) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/auth/register", g.register)
	mux.HandleFunc("POST /v1/auth/login", g.login)
	mux.HandleFunc("POST /v1/auth/guest", g.guest)
	mux.HandleFunc("GET /v1/me", g.authed(g.me))
	mux.HandleFunc("GET /v1/users/{id}", g.authed(g.userByID))
	mux.HandleFunc("GET /v1/users", g.authed(g.userByName))
	mux.HandleFunc("POST /v1/conversations/direct", g.authed(g.direct))
	mux.HandleFunc("POST /v1/groups", g.authed(g.createGroup))
	mux.HandleFunc("POST /v1/groups/{id}/members", g.authed(g.addMembers))
	mux.HandleFunc("DELETE /v1/groups/{id}/members/{user_id}", g.authed(g.removeMember))
	mux.HandleFunc("POST /v1/groups/{id}/leave", g.authed(g.leave))
	mux.HandleFunc("GET /v1/conversations", g.authed(g.conversations))
	mux.HandleFunc("GET /v1/conversations/{id}", g.authed(g.conversation))
	mux.HandleFunc("GET /v1/conversations/{id}/messages", g.authed(g.history))
	mux.HandleFunc("POST /v1/conversations/{id}/messages", g.authed(g.postMessage))
	mux.HandleFunc("POST /v1/conversations/{id}/read", g.authed(g.markRead))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", g.readyz)
	mux.HandleFunc("/v1/", notFound(mux))
	if g.cfg.WebRoot != nil {
		mux.Handle("/", g.cfg.WebRoot)
	}
	return mux
}

// notFound answers paths under /v1/ that no route takes: 405 with Allow when
// the path exists for other methods, else 404; both as API errors.
func notFound(mux *http.ServeMux) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var allow []string
		for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodDelete} {
			probe := r.Clone(r.Context())
			probe.Method = m
			if _, pattern := mux.Handler(probe); pattern != "" && pattern != "/v1/" {
				allow = append(allow, m)
			}
		}
		if len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			e := apierror.New(apierror.InvalidArgument, "%s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(allow, ", "))
			writeJSON(w, http.StatusMethodNotAllowed, map[string]clientapi.ErrorData{"error": {Code: string(e.Code), Message: e.Message}})
			return
		}
		writeError(w, apierror.New(apierror.NotFound, "no such endpoint: %s %s", r.Method, r.URL.Path))
	}
}

func (g *Gateway) readyz(w http.ResponseWriter, _ *http.Request) {
	if g.draining.Load() {
		writeError(w, apierror.New(apierror.Unavailable, "draining"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "sessions": g.Sessions()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // JSON, not HTML: escaping only inflates the answer
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	e := apierror.From(err)
	writeJSON(w, e.Code.HTTPStatus(), map[string]clientapi.ErrorData{"error": {Code: string(e.Code), Message: e.Message}})
}

// readJSON decodes a request body, refusing bodies over maxBody.
func readJSON(w http.ResponseWriter, r *http.Request, v any) error {
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return apierror.New(apierror.PayloadTooLarge, "request body is over %d bytes", maxBody)
		}
		return apierror.New(apierror.InvalidArgument, "malformed JSON body: %v", err)
	}
	if dec.More() {
		return apierror.New(apierror.InvalidArgument, "malformed JSON body: more than one value")
	}
	return nil
}

type callerKey struct{}

func caller(ctx context.Context) string { return ctx.Value(callerKey{}).(string) }

// authed checks the bearer token before the handler runs.
func (g *Gateway) authed(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		if len(auth) < 8 || !strings.EqualFold(auth[:7], "bearer ") {
			writeError(w, apierror.New(apierror.Unauthenticated, "Authorization: Bearer <token> is required"))
			return
		}
		c, err := g.keys.Verify(strings.TrimSpace(auth[7:]))
		if err != nil {
			writeError(w, apierror.New(apierror.Unauthenticated, "invalid or expired token"))
			return
		}
		ctx, cancel := context.WithTimeout(context.WithValue(r.Context(), callerKey{}, c.UserID), g.cfg.CallTimeout)
		defer cancel()
		h(w, r.WithContext(ctx))
	}
}

type authBody struct {
	Username string `json:"username"`
	Password string `json:"password"`
	Nickname string `json:"nickname"`
}

type authAnswer struct {
	User      clientapi.User `json:"user"`
	Token     string         `json:"token"`
	ExpiresAt clientapi.Time `json:"expires_at"`
}

func (g *Gateway) answerAuth(w http.ResponseWriter, status int, r *gochatv1.AuthResponse, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, status, authAnswer{User: clientapi.UserFrom(r.User), Token: r.Token, ExpiresAt: clientapi.Time(r.ExpiresAtMs)})
}

// throttled answers 429 with Retry-After when a limiter refuses: a source
// address or username that tries too often waits, whoever it is.
func throttled(w http.ResponseWriter, l *userLimits, key string, retryAfter int, what string) bool {
	if l.allow(key, time.Now()) {
		return false
	}
	w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
	writeError(w, apierror.New(apierror.RateLimited, "too many %s, try again later", what))
	return true
}

func sourceAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (g *Gateway) register(w http.ResponseWriter, r *http.Request) {
	if throttled(w, g.authAddr, sourceAddr(r), 5, "sign-ups and logins from this address") {
		return
	}
	var b authBody
	if err := readJSON(w, r, &b); err != nil {
		writeError(w, err)
		return
	}
	resp, err := g.logic.Register(r.Context(), &gochatv1.RegisterRequest{Username: normalUsername(b.Username), Password: b.Password, Nickname: b.Nickname})
	g.answerAuth(w, http.StatusCreated, resp, err)
}

func (g *Gateway) login(w http.ResponseWriter, r *http.Request) {
	if throttled(w, g.authAddr, sourceAddr(r), 5, "sign-ups and logins from this address") {
		return
	}
	var b authBody
	if err := readJSON(w, r, &b); err != nil {
		writeError(w, err)
		return
	}
	if throttled(w, g.authName, normalUsername(b.Username), 10, "logins for this username") {
		return
	}
	resp, err := g.logic.Login(r.Context(), &gochatv1.LoginRequest{Username: normalUsername(b.Username), Password: b.Password})
	g.answerAuth(w, http.StatusOK, resp, err)
}

func (g *Gateway) guest(w http.ResponseWriter, r *http.Request) {
	if throttled(w, g.authAddr, sourceAddr(r), 5, "sign-ups and logins from this address") ||
		throttled(w, g.guests, sourceAddr(r), 600, "guest accounts from this address") {
		return
	}
	var b authBody
	if r.ContentLength != 0 {
		if err := readJSON(w, r, &b); err != nil {
			writeError(w, err)
			return
		}
	}
	resp, err := g.logic.Guest(r.Context(), &gochatv1.GuestRequest{Nickname: b.Nickname})
	g.answerAuth(w, http.StatusOK, resp, err)
}

func (g *Gateway) writeUser(w http.ResponseWriter, r *http.Request, req *gochatv1.GetUserRequest) {
	resp, err := g.logic.GetUser(r.Context(), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, clientapi.UserFrom(resp.User))
}

func (g *Gateway) me(w http.ResponseWriter, r *http.Request) {
	g.writeUser(w, r, &gochatv1.GetUserRequest{Key: &gochatv1.GetUserRequest_Id{Id: caller(r.Context())}})
}

func (g *Gateway) userByID(w http.ResponseWriter, r *http.Request) {
	g.writePresentUser(w, r, &gochatv1.GetUserRequest{Key: &gochatv1.GetUserRequest_Id{Id: r.PathValue("id")}})
}

func (g *Gateway) userByName(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("username")
	if name == "" {
		writeError(w, apierror.New(apierror.InvalidArgument, "the username query parameter is required"))
		return
	}
	g.writePresentUser(w, r, &gochatv1.GetUserRequest{Key: &gochatv1.GetUserRequest_Username{Username: normalUsername(name)}})
}

func (g *Gateway) writeConversation(w http.ResponseWriter, r *http.Request, status int, c *gochatv1.Conversation, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	out := []clientapi.Conversation{clientapi.ConversationFrom(c)}
	g.withPresence(r.Context(), out)
	writeJSON(w, status, out[0])
}

func (g *Gateway) direct(w http.ResponseWriter, r *http.Request) {
	var b struct {
		UserID string `json:"user_id"`
	}
	if err := readJSON(w, r, &b); err != nil {
		writeError(w, err)
		return
	}
	if b.UserID == "" {
		writeError(w, apierror.New(apierror.InvalidArgument, "user_id is required"))
		return
	}
	c, err := g.logic.GetOrCreateDirect(r.Context(), &gochatv1.DirectRequest{CallerId: caller(r.Context()), PeerId: b.UserID})
	g.writeConversation(w, r, http.StatusOK, c, err)
}

func (g *Gateway) createGroup(w http.ResponseWriter, r *http.Request) {
	var b struct {
		Name      string   `json:"name"`
		MemberIDs []string `json:"member_ids"`
	}
	if err := readJSON(w, r, &b); err != nil {
		writeError(w, err)
		return
	}
	c, err := g.logic.CreateGroup(r.Context(), &gochatv1.GroupRequest{CallerId: caller(r.Context()), Name: b.Name, MemberIds: b.MemberIDs})
	g.writeConversation(w, r, http.StatusCreated, c, err)
}

func (g *Gateway) addMembers(w http.ResponseWriter, r *http.Request) {
	var b struct {
		UserIDs []string `json:"user_ids"`
	}
	if err := readJSON(w, r, &b); err != nil {
		writeError(w, err)
		return
	}
	c, err := g.logic.AddMembers(r.Context(), &gochatv1.MembersRequest{CallerId: caller(r.Context()), ConversationId: r.PathValue("id"), UserIds: b.UserIDs})
	g.writeConversation(w, r, http.StatusOK, c, err)
}

func (g *Gateway) removeMember(w http.ResponseWriter, r *http.Request) {
	_, err := g.logic.RemoveMember(r.Context(), &gochatv1.MemberRequest{CallerId: caller(r.Context()), ConversationId: r.PathValue("id"), UserId: r.PathValue("user_id")})
	writeEmpty(w, err)
}

func (g *Gateway) leave(w http.ResponseWriter, r *http.Request) {
	_, err := g.logic.LeaveGroup(r.Context(), &gochatv1.LeaveRequest{CallerId: caller(r.Context()), ConversationId: r.PathValue("id")})
	writeEmpty(w, err)
}

func writeEmpty(w http.ResponseWriter, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (g *Gateway) conversations(w http.ResponseWriter, r *http.Request) {
	resp, err := g.logic.ListConversations(r.Context(), &gochatv1.ListConversationsRequest{UserId: caller(r.Context()), Limit: int32(g.cfg.MaxPage)})
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]clientapi.Conversation, len(resp.Conversations))
	for i, c := range resp.Conversations {
		out[i] = clientapi.ConversationFrom(c)
	}
	g.withPresence(r.Context(), out)
	writeJSON(w, http.StatusOK, map[string]any{"conversations": out})
}

func (g *Gateway) conversation(w http.ResponseWriter, r *http.Request) {
	c, err := g.logic.GetConversation(r.Context(), &gochatv1.GetConversationRequest{ConversationId: r.PathValue("id"), ViewerId: caller(r.Context())})
	g.writeConversation(w, r, http.StatusOK, c, err)
}

// queryInt reads an optional non-negative integer query parameter.
func queryInt(r *http.Request, name string) (int64, bool, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, false, apierror.New(apierror.InvalidArgument, "%s must be a non-negative integer", name)
	}
	return n, true, nil
}

func (g *Gateway) history(w http.ResponseWriter, r *http.Request) {
	after, hasAfter, err1 := queryInt(r, "after_seq")
	before, hasBefore, err2 := queryInt(r, "before_seq")
	limit, hasLimit, err3 := queryInt(r, "limit")
	for _, err := range []error{err1, err2, err3} {
		if err != nil {
			writeError(w, err)
			return
		}
	}
	if hasAfter && hasBefore {
		writeError(w, apierror.New(apierror.InvalidArgument, "give after_seq or before_seq, not both"))
		return
	}
	if hasBefore && before == 0 {
		writeError(w, apierror.New(apierror.InvalidArgument, "before_seq must be at least 1"))
		return
	}
	if hasLimit && (limit < 1 || limit > int64(g.cfg.MaxPage)) {
		writeError(w, apierror.New(apierror.InvalidArgument, "limit must be between 1 and %d", g.cfg.MaxPage))
		return
	}
	resp, err := g.logic.ListMessages(r.Context(), &gochatv1.ListMessagesRequest{
		ConversationId: r.PathValue("id"), ViewerId: caller(r.Context()), AfterSeq: after, BeforeSeq: before, Limit: int32(limit),
	})
	if err != nil {
		writeError(w, err)
		return
	}
	msgs, cut := clientapi.CapMessages(clientapi.MessagesFrom(resp.Messages), g.cfg.MaxAnswerBytes, before > 0)
	writeJSON(w, http.StatusOK, map[string]any{"messages": msgs, "has_more": resp.HasMore || cut})
}

func (g *Gateway) postMessage(w http.ResponseWriter, r *http.Request) {
	var b clientapi.SendData
	if err := readJSON(w, r, &b); err != nil {
		writeError(w, err)
		return
	}
	if len(b.Content) > g.cfg.MaxContentBytes {
		writeError(w, apierror.New(apierror.PayloadTooLarge, "content is %d bytes, at most %d are allowed", len(b.Content), g.cfg.MaxContentBytes))
		return
	}
	if !g.httpSend.allow(caller(r.Context()), time.Now()) {
		w.Header().Set("Retry-After", "1")
		writeError(w, apierror.New(apierror.RateLimited, "too many sends, at most %g per second", g.cfg.SendRate))
		return
	}
	// Through the batcher, as a WebSocket send: the batch's deadline bounds
	// the wait, and a request whose client left may still be stored (a
	// retry with the same client_msg_id finds it).
	resp, err := g.sends.send(r.Context(), &gochatv1.SendRequest{
		CallerId: caller(r.Context()), ConversationId: r.PathValue("id"),
		ClientMsgId: b.ClientMsgID, ContentType: b.ContentType, Content: b.Content,
	})
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, clientapi.MessageFrom(resp.Message))
}

func (g *Gateway) markRead(w http.ResponseWriter, r *http.Request) {
	var b struct {
		Seq *int64 `json:"seq"`
	}
	if err := readJSON(w, r, &b); err != nil {
		writeError(w, err)
		return
	}
	if b.Seq == nil {
		writeError(w, apierror.New(apierror.InvalidArgument, "seq is required"))
		return
	}
	_, err := g.logic.MarkRead(r.Context(), &gochatv1.MarkReadRequest{CallerId: caller(r.Context()), ConversationId: r.PathValue("id"), Seq: *b.Seq})
	writeEmpty(w, err)
}
