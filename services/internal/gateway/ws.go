package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/time/rate"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/apierror"
	"github.com/gochat/gochat/services/internal/authtoken"
	"github.com/gochat/gochat/services/internal/clientapi"
	"github.com/gochat/gochat/services/internal/ids"
)

const wsPath = "/v1/ws"

// upgradeWS performs the zero-copy WebSocket handshake on a raw connection
// whose request line has been peeked, checks the token, registers the
// session and sends hello. It runs on the connection's accept goroutine,
// which ends when it returns: from then on the poller owns the session.
func (g *Gateway) upgradeWS(conn net.Conn, br *bufio.Reader) {
	var (
		token      string
		queryToken string
	)
	reject := func(code apierror.Code, msg string) error {
		body, _ := json.Marshal(map[string]clientapi.ErrorData{"error": {Code: string(code), Message: msg}})
		return ws.RejectConnectionError(ws.RejectionStatus(code.HTTPStatus()), ws.RejectionReason(string(body)))
	}
	var claims authtoken.Claims
	u := ws.Upgrader{
		OnRequest: func(uri []byte) error {
			if i := bytes.IndexByte(uri, '?'); i >= 0 {
				q, err := url.ParseQuery(string(uri[i+1:]))
				if err != nil {
					return reject(apierror.InvalidArgument, "malformed query string")
				}
				queryToken = q.Get("token")
			}
			return nil
		},
		OnHeader: func(key, value []byte) error {
			if strings.EqualFold(string(key), "Authorization") {
				v := string(value)
				if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
					token = strings.TrimSpace(v[7:])
				}
			}
			return nil
		},
		OnBeforeUpgrade: func() (ws.HandshakeHeader, error) {
			if g.draining.Load() {
				return nil, reject(apierror.Unavailable, "this gateway is draining, connect again")
			}
			if token == "" {
				token = queryToken
			}
			if token == "" {
				return nil, reject(apierror.Unauthenticated, "a token is required (Authorization: Bearer or ?token=)")
			}
			c, err := g.keys.Verify(token)
			if err != nil {
				return nil, reject(apierror.Unauthenticated, "invalid or expired token")
			}
			claims = c
			return ws.HandshakeHeaderString(""), nil
		},
	}
	_ = conn.SetDeadline(time.Now().Add(g.cfg.HandshakeTimeout))
	if _, err := u.Upgrade(readWriter{br, conn}); err != nil {
		g.metrics.handshakeErrors.Inc()
		_ = conn.Close()
		return
	}
	_ = conn.SetDeadline(time.Time{})
	if br.Buffered() > 0 {
		// RFC 6455: a client must wait for the handshake answer before sending frames.
		_ = ws.WriteFrame(conn, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusProtocolError, "frame sent before the handshake completed")))
		_ = conn.Close()
		return
	}

	ctx, cancel := context.WithTimeout(g.ctx, g.cfg.HandshakeTimeout)
	defer cancel()
	user, err := g.logic.GetUser(ctx, &gochatv1.GetUserRequest{Key: &gochatv1.GetUserRequest_Id{Id: claims.UserID}})
	if err != nil {
		g.closeEarly(conn, err)
		return
	}
	s := &session{id: ids.New(), userID: claims.UserID, conn: conn, g: g}
	s.touch(time.Now())
	if err := g.presence.register(ctx, s); err != nil {
		g.closeEarly(conn, apierror.New(apierror.Unavailable, "presence is unavailable, try again"))
		return
	}
	g.hub.add(s)
	g.metrics.connects.Inc()
	s.enqueue(clientapi.Frame(clientapi.TypeHello, clientapi.Hello{
		User: clientapi.UserFrom(user.User), SessionID: s.id, HeartbeatMs: g.cfg.Heartbeat.Milliseconds(),
	}))
	if err := g.poller.add(s); err != nil {
		g.log.Error("watch session", "err", err)
		s.shutdown("poller refused the connection")
	}
}

// closeEarly ends a connection that was upgraded but could not become a session.
func (g *Gateway) closeEarly(conn net.Conn, err error) {
	e := apierror.From(err)
	_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
	_ = ws.WriteFrame(conn, ws.NewTextFrame(clientapi.ErrorFrame(string(e.Code), e.Message, "")))
	status := ws.StatusInternalServerError
	if e.Code == apierror.Unavailable {
		status = ws.StatusGoingAway
	} else if e.Code == apierror.NotFound || e.Code == apierror.Unauthenticated {
		status = ws.StatusPolicyViolation
	}
	_ = ws.WriteFrame(conn, ws.NewCloseFrame(ws.NewCloseFrameBody(status, e.Message)))
	_ = conn.Close()
}

type readWriter struct {
	io.Reader
	io.Writer
}

var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// errClientClosed ends a session the client closed.
var errClientClosed = errors.New("client closed the connection")

// readReady reads every frame the socket has, then hands the session back to
// the poller. It runs on a poller goroutine.
func (g *Gateway) readReady(s *session) {
	if s.isClosed() {
		return
	}
	br := readers.Get().(*bufio.Reader)
	br.Reset(s.conn)
	err := g.readFrames(s, br)
	br.Reset(nil)
	readers.Put(br)
	if err != nil {
		// A close frame, ours or the client's, is written before the socket
		// closes: the writer shuts the session down once it is out.
		var pe *protocolError
		switch {
		case errors.As(err, &pe):
			g.log.Info("closing session", "session_id", s.id, "user_id", s.userID, "status", pe.code, "reason", pe.reason)
			s.closeWith(pe.code, pe.reason)
		case errors.Is(err, errClientClosed):
		default:
			s.shutdown(err.Error())
		}
		return
	}
	if err := g.poller.rearm(s); err != nil {
		s.shutdown("rearm: " + err.Error())
	}
}

// protocolError closes the connection for a WebSocket-level violation.
type protocolError struct {
	code   ws.StatusCode
	reason string
}

func (e *protocolError) Error() string { return e.reason }

func (g *Gateway) readFrames(s *session, br *bufio.Reader) error {
	for {
		_ = s.conn.SetReadDeadline(time.Now().Add(g.cfg.FrameReadTimeout))
		h, err := ws.ReadHeader(br)
		if err != nil {
			return err
		}
		if err := g.readFrame(s, br, h); err != nil {
			return err
		}
		s.touch(time.Now())
		if br.Buffered() == 0 && !s.inFrag {
			return nil
		}
	}
}

func (g *Gateway) readFrame(s *session, br *bufio.Reader, h ws.Header) error {
	if !h.Masked {
		return &protocolError{ws.StatusProtocolError, "client frames must be masked"}
	}
	if h.Rsv != 0 {
		return &protocolError{ws.StatusProtocolError, "no extension was negotiated"}
	}
	if h.OpCode.IsControl() {
		if h.Length > 125 || !h.Fin {
			return &protocolError{ws.StatusProtocolError, "bad control frame"}
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(br, p); err != nil {
			return err
		}
		ws.Cipher(p, h.Mask, 0)
		switch h.OpCode {
		case ws.OpClose:
			s.closeWith(ws.StatusNormalClosure, "")
			return errClientClosed
		case ws.OpPing:
			s.enqueueOp(ws.OpPong, p)
		}
		return nil
	}

	switch {
	case h.OpCode == ws.OpContinuation && !s.inFrag:
		return &protocolError{ws.StatusProtocolError, "continuation frame without a message"}
	case h.OpCode != ws.OpContinuation && s.inFrag:
		return &protocolError{ws.StatusProtocolError, "new message before the last one ended"}
	case h.OpCode != ws.OpContinuation:
		s.inFrag, s.fragOp, s.fragTooBig, s.frag = true, h.OpCode, false, s.frag[:0]
	}
	total := int64(len(s.frag)) + h.Length
	if total > int64(g.cfg.MaxFrameBytes)*16 {
		// Far beyond the limit: reading it all would let one client waste the gateway's time.
		return &protocolError{ws.StatusMessageTooBig, "message far over the frame limit"}
	}
	if s.fragTooBig || total > int64(g.cfg.MaxFrameBytes) {
		s.fragTooBig = true
		s.frag = nil
		if _, err := io.CopyN(io.Discard, br, h.Length); err != nil {
			return err
		}
	} else {
		start := len(s.frag)
		s.frag = append(s.frag, make([]byte, h.Length)...)
		if _, err := io.ReadFull(br, s.frag[start:]); err != nil {
			return err
		}
		ws.Cipher(s.frag[start:], h.Mask, 0)
	}
	if !h.Fin {
		return nil
	}
	s.inFrag = false
	g.metrics.framesIn.Inc()
	payload, op, tooBig := s.frag, s.fragOp, s.fragTooBig
	s.frag = nil
	switch {
	case tooBig:
		return g.clientError(s, apierror.New(apierror.PayloadTooLarge, "frame is over the %d byte limit", g.cfg.MaxFrameBytes), "")
	case op != ws.OpText:
		return g.clientError(s, apierror.New(apierror.InvalidArgument, "only text frames holding JSON are accepted"), "")
	}
	return g.handleFrame(s, payload)
}

// clientError answers a bad frame with an error frame. The connection stays
// open, unless the client keeps at it: past the abuse limit it is closed 1008.
func (g *Gateway) clientError(s *session, e *apierror.Error, clientMsgID string) error {
	g.metrics.clientErrors.WithLabelValues(string(e.Code)).Inc()
	s.enqueue(clientapi.ErrorFrame(string(e.Code), e.Message, clientMsgID))
	now := time.Now().Unix()
	if now-s.errWindow >= 10 {
		s.errWindow, s.errCount, s.rateErrors = now, 0, 0
	}
	if e.Code == apierror.RateLimited {
		s.rateErrors++
	} else if e.Code != apierror.NotFound && e.Code != apierror.Unavailable && e.Code != apierror.Internal {
		s.errCount++
	}
	if s.errCount > g.cfg.MaxBadFrames || s.rateErrors > 10*g.cfg.MaxBadFrames {
		return &protocolError{ws.StatusPolicyViolation, "too many bad frames"}
	}
	return nil
}

func (g *Gateway) handleFrame(s *session, payload []byte) error {
	if s.frameLimit == nil {
		s.frameLimit = rate.NewLimiter(rate.Limit(g.cfg.FrameRate), g.cfg.FrameBurst)
	}
	if !s.frameLimit.Allow() {
		return g.clientError(s, apierror.New(apierror.RateLimited, "too many frames, slow down"), "")
	}
	var f clientapi.InFrame
	if err := json.Unmarshal(payload, &f); err != nil {
		return g.clientError(s, apierror.New(apierror.InvalidArgument, "malformed JSON frame: %v", err), "")
	}
	switch f.Type {
	case clientapi.TypePing:
		s.enqueue(pongFrame)
		return nil
	case clientapi.TypeSend:
		return g.withCall(s, f.Data, g.handleSend)
	case clientapi.TypeSync:
		return g.withCall(s, f.Data, g.handleSync)
	case clientapi.TypeRead:
		return g.withCall(s, f.Data, g.handleRead)
	case "":
		return g.clientError(s, apierror.New(apierror.InvalidArgument, "frame has no type"), "")
	default:
		return g.clientError(s, apierror.New(apierror.InvalidArgument, "unknown frame type %q", f.Type), "")
	}
}

var pongFrame = clientapi.Frame(clientapi.TypePong, struct{}{})

// withCall runs a handler that calls im-logic, under the call timeout.
func (g *Gateway) withCall(s *session, data json.RawMessage, h func(context.Context, *session, json.RawMessage) error) error {
	ctx, cancel := context.WithTimeout(g.ctx, g.cfg.CallTimeout)
	defer cancel()
	return h(ctx, s, data)
}

func decodeData(raw json.RawMessage, v any) *apierror.Error {
	if len(raw) == 0 || string(raw) == "null" {
		return apierror.New(apierror.InvalidArgument, "frame has no data")
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return apierror.New(apierror.InvalidArgument, "malformed data: %v", err)
	}
	return nil
}

func (g *Gateway) handleSend(ctx context.Context, s *session, raw json.RawMessage) error {
	var d clientapi.SendData
	if e := decodeData(raw, &d); e != nil {
		return g.clientError(s, e, "")
	}
	if d.ClientMsgID == "" {
		return g.clientError(s, apierror.New(apierror.InvalidArgument, "client_msg_id is required"), "")
	}
	if s.sendLimit == nil {
		s.sendLimit = rate.NewLimiter(rate.Limit(g.cfg.SendRate), g.cfg.SendBurst)
	}
	if !s.sendLimit.Allow() {
		return g.clientError(s, apierror.New(apierror.RateLimited, "too many sends, at most %g per second", g.cfg.SendRate), d.ClientMsgID)
	}
	if len(d.Content) > g.cfg.MaxContentBytes {
		return g.clientError(s, apierror.New(apierror.PayloadTooLarge, "content is %d bytes, at most %d are allowed", len(d.Content), g.cfg.MaxContentBytes), d.ClientMsgID)
	}
	r, err := g.logic.Send(ctx, &gochatv1.SendRequest{
		CallerId: s.userID, SessionId: s.id, ConversationId: d.ConversationID, ToUserId: d.ToUserID,
		ClientMsgId: d.ClientMsgID, ContentType: d.ContentType, Content: d.Content,
	})
	if err != nil {
		return g.clientError(s, apierror.From(err), d.ClientMsgID)
	}
	g.metrics.sends.Inc()
	s.enqueue(clientapi.Frame(clientapi.TypeAck, clientapi.Ack{ClientMsgID: d.ClientMsgID, Message: clientapi.MessageFrom(r.Message)}))
	return nil
}

func (g *Gateway) handleSync(ctx context.Context, s *session, raw json.RawMessage) error {
	var d clientapi.SyncData
	if e := decodeData(raw, &d); e != nil {
		return g.clientError(s, e, "")
	}
	if d.ConversationID == "" || d.AfterSeq == nil {
		return g.clientError(s, apierror.New(apierror.InvalidArgument, "sync needs conversation_id and after_seq"), "")
	}
	if d.Limit < 0 || d.Limit > int32(g.cfg.MaxPage) {
		return g.clientError(s, apierror.New(apierror.InvalidArgument, "limit must be between 1 and %d", g.cfg.MaxPage), "")
	}
	r, err := g.logic.ListMessages(ctx, &gochatv1.ListMessagesRequest{
		ConversationId: d.ConversationID, ViewerId: s.userID, AfterSeq: *d.AfterSeq, Limit: d.Limit,
	})
	if err != nil {
		return g.clientError(s, apierror.From(err), "")
	}
	msgs, cut := clientapi.CapMessages(clientapi.MessagesFrom(r.Messages), g.cfg.MaxAnswerBytes, false)
	s.enqueue(clientapi.Frame(clientapi.TypeSync, clientapi.SyncResult{
		ConversationID: d.ConversationID, Messages: msgs, HasMore: r.HasMore || cut,
	}))
	return nil
}

func (g *Gateway) handleRead(ctx context.Context, s *session, raw json.RawMessage) error {
	var d clientapi.ReadData
	if e := decodeData(raw, &d); e != nil {
		return g.clientError(s, e, "")
	}
	if d.ConversationID == "" || d.Seq == nil {
		return g.clientError(s, apierror.New(apierror.InvalidArgument, "read needs conversation_id and seq"), "")
	}
	_, err := g.logic.MarkRead(ctx, &gochatv1.MarkReadRequest{CallerId: s.userID, SessionId: s.id, ConversationId: d.ConversationID, Seq: *d.Seq})
	if err != nil {
		return g.clientError(s, apierror.From(err), "")
	}
	return nil
}
