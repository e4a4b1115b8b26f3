package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"

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
	reject := func(code apierror.Code, msg string, opts ...ws.RejectOption) error {
		body, _ := json.Marshal(map[string]clientapi.ErrorData{"error": {Code: string(code), Message: msg}})
		return ws.RejectConnectionError(append([]ws.RejectOption{ws.RejectionStatus(code.HTTPStatus()), ws.RejectionReason(string(body))}, opts...)...)
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
				// Behind a load balancer the retry lands on another gateway.
				return nil, reject(apierror.Unavailable, "this gateway is draining, connect again",
					ws.RejectionHeader(ws.HandshakeHeaderString("Retry-After: 1\r\n")))
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
			if !g.userSess.reserve(c.UserID) {
				return nil, reject(apierror.RateLimited, fmt.Sprintf("at most %d sessions per user on one gateway", g.cfg.MaxUserSessions))
			}
			claims = c
			return ws.HandshakeHeaderString(""), nil
		},
	}
	// The handshake's answer is kept, not written: it goes out with the
	// hello (or with the error that ends the connection) in one write, one
	// system call and one packet less per connect.
	var answer frameBuffer
	_ = conn.SetDeadline(time.Now().Add(g.cfg.HandshakeTimeout))
	if _, err := u.Upgrade(readWriter{br, &answer}); err != nil {
		g.metrics.handshakeErrors.Inc()
		if claims.UserID != "" {
			g.userSess.release(claims.UserID)
		}
		_, _ = conn.Write(answer.b) // the refusal, if the upgrader wrote one
		_ = conn.Close()
		return
	}
	_ = conn.SetDeadline(time.Time{})
	// Until the session exists, a failure gives the user's slot back; from
	// then on the session's shutdown does.
	sessionMade := false
	defer func() {
		if !sessionMade {
			g.userSess.release(claims.UserID)
		}
	}()
	if br.Buffered() > 0 {
		// RFC 6455: a client must wait for the handshake answer before sending frames.
		_ = ws.WriteFrame(&answer, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusProtocolError, "frame sent before the handshake completed")))
		_, _ = conn.Write(answer.b)
		_ = conn.Close()
		return
	}

	ctx, cancel := context.WithTimeout(g.ctx, g.cfg.HandshakeTimeout)
	defer cancel()
	user, err := g.helloUser(ctx, claims)
	if err != nil {
		g.closeEarly(conn, answer.b, err)
		return
	}
	s := &session{id: ids.New(), userID: claims.UserID, conn: conn, g: g}
	s.lane = g.writers.laneOf(s.id)
	// The descriptor is read before the first frame is queued: the writers
	// write to it directly.
	if raw, fd, err := rawFD(conn); err == nil {
		s.raw, s.fd = raw, fd
	}
	// The hello is the session's first frame. It is queued before anything
	// can find the session and held there (writing set, no writer
	// scheduled) until the session is registered: frames pushed meanwhile
	// queue behind it.
	hello := clientapi.Frame(clientapi.TypeHello, clientapi.Hello{User: user, SessionID: s.id, HeartbeatMs: g.cfg.Heartbeat.Milliseconds()})
	s.queue, s.queuedBytes, s.writing = []outItem{{op: ws.OpText, payload: hello}}, len(hello), true
	sessionMade = true
	s.touch(time.Now())
	// The session is in the hub before it is in presence: a push routed to
	// it by presence always finds it here (a session the gateway said it did
	// not hold would be dropped from presence as stale).
	g.hub.add(s)
	// Registration also refuses a user who no longer exists, which the
	// token's profile cannot know.
	if err := g.presence.register(ctx, s); err != nil {
		if apierror.From(err).Code != apierror.NotFound {
			err = apierror.New(apierror.Unavailable, "presence is unavailable, try again")
		}
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = conn.Write(appendEarlyClose(answer.b, err))
		s.shutdown("handshake failed")
		return
	}
	g.metrics.connects.Inc()
	if !s.writeHandshake(answer.b) {
		return
	}
	if err := g.poller.add(s); err != nil {
		g.log.Error("watch session", "err", err)
		s.shutdown("poller refused the connection")
		return
	}
	if g.draining.Load() {
		// The drain began during this handshake and may have listed the
		// sessions before this one was added: send it away now, unless the
		// drain did list it (then its schedule closes it).
		if s.tellReconnect(0) {
			s.closeWith(ws.StatusGoingAway, drainReason)
		}
	}
}

// writeHandshake writes the handshake's answer and the frames held since
// (the hello first) in one write, then lets the session's writer take over.
// False when the session is gone.
func (s *session) writeHandshake(answer []byte) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	batch := s.queue
	s.queue, s.queuedBytes = nil, 0
	s.mu.Unlock()
	buf, texts := s.encode(answer, batch)
	n, err := writeNow(s, buf)
	if err != nil {
		s.writeFailed()
		return false
	}
	s.g.metrics.framesOut.Add(float64(texts))
	if n < len(buf) {
		// Not a socket the writers write to directly (or, unlikely on a new
		// connection, a full one).
		s.writeLater(buf[n:])
		return true
	}
	s.mu.Lock()
	more := len(s.queue) > 0 || s.closing
	if !more {
		s.writing = false
	}
	s.mu.Unlock()
	if more {
		s.g.scheduleWrite(s) // frames pushed meanwhile, or a close
	}
	return true
}

// helloUser is the user a hello shows: the profile the token carries, or,
// for a token issued before tokens carried one, the user as im-logic has it.
func (g *Gateway) helloUser(ctx context.Context, c authtoken.Claims) (clientapi.User, error) {
	if p := c.Profile; p != nil {
		g.metrics.helloFrom.WithLabelValues("token").Inc()
		return clientapi.User{ID: c.UserID, Username: p.Username, Nickname: p.Nickname, Guest: c.Guest, CreatedAt: clientapi.Time(p.CreatedAtMs)}, nil
	}
	g.metrics.helloFrom.WithLabelValues("lookup").Inc()
	r, err := g.logic.GetUser(ctx, &gochatv1.GetUserRequest{Key: &gochatv1.GetUserRequest_Id{Id: c.UserID}})
	if err != nil {
		return clientapi.User{}, err
	}
	return clientapi.UserFrom(r.User), nil
}

// closeEarly ends a connection that was upgraded but could not become a
// session: the handshake's answer, then the error, then the close.
func (g *Gateway) closeEarly(conn net.Conn, answer []byte, err error) {
	_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = conn.Write(appendEarlyClose(answer, err))
	_ = conn.Close()
}

// appendEarlyClose appends the error frame and the close frame that end a
// connection refused after its upgrade.
func appendEarlyClose(b []byte, err error) []byte {
	e := apierror.From(err)
	status := ws.StatusInternalServerError
	if e.Code == apierror.Unavailable {
		status = ws.StatusGoingAway
	} else if e.Code == apierror.NotFound || e.Code == apierror.Unauthenticated {
		status = ws.StatusPolicyViolation
	}
	fb := frameBuffer{b: b}
	_ = ws.WriteFrame(&fb, ws.NewTextFrame(clientapi.ErrorFrame(string(e.Code), e.Message, "")))
	_ = ws.WriteFrame(&fb, ws.NewCloseFrame(ws.NewCloseFrameBody(status, e.Message)))
	return fb.b
}

type readWriter struct {
	io.Reader
	io.Writer
}

// readChunk is how much one read takes; maxReadPerTurn bounds what one
// readiness event reads before the socket goes back to the poller, so a
// client streaming bytes cannot keep a reader from the others.
const (
	readChunk      = 4096
	maxReadPerTurn = 64 << 10
	// maxInFlight bounds the backend calls queued per session; past it a
	// frame is answered rate_limited at once. Reading never pauses for it:
	// a paused socket would also hide the client's pings, and its floods
	// from the rate limiter.
	maxInFlight = 32
)

var readBufs = sync.Pool{New: func() any { b := make([]byte, readChunk); return &b }}

// errClientClosed ends a session the client closed.
var errClientClosed = errors.New("client closed the connection")

// readReady reads what the socket has now, without waiting for more, parses
// it into the session's own frame state, and hands the session back to the
// poller. A half-sent frame stays in that state: no reader ever waits on one
// client. It runs on a poller goroutine.
func (g *Gateway) readReady(s *session) {
	if s.isClosed() {
		return
	}
	bp := readBufs.Get().(*[]byte)
	s.readMu.Lock()
	err := g.readAvailable(s, *bp)
	s.readMu.Unlock()
	readBufs.Put(bp)
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

func (g *Gateway) readAvailable(s *session, buf []byte) error {
	for total := 0; total < maxReadPerTurn; {
		n, err := readNow(s, buf)
		if n > 0 {
			total += n
			if err := s.frames.feed(buf[:n], g.cfg.MaxFrameBytes, func(ev frameEvent) error { return g.onFrame(s, ev) }); err != nil {
				return err
			}
		}
		if s.frames.pending() {
			if s.partialSince.Load() == 0 {
				s.partialSince.Store(time.Now().UnixMilli())
			}
		} else {
			s.partialSince.Store(0)
		}
		if errors.Is(err, errNoData) {
			return nil
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.EOF
		}
	}
	return nil
}

// protocolError closes the connection for a WebSocket-level violation.
type protocolError struct {
	code   ws.StatusCode
	reason string
}

func (e *protocolError) Error() string { return e.reason }

// onFrame handles a control frame or a complete message.
func (g *Gateway) onFrame(s *session, ev frameEvent) error {
	s.touch(time.Now())
	switch ev.op {
	case ws.OpClose:
		s.closeWith(ws.StatusNormalClosure, "")
		return errClientClosed
	case ws.OpPing:
		s.enqueueOp(ws.OpPong, ev.payload)
		return nil
	case ws.OpPong:
		return nil
	}
	g.metrics.framesIn.Inc()
	switch {
	case ev.tooBig:
		return g.clientError(s, apierror.New(apierror.PayloadTooLarge, "frame is over the %d byte limit", g.cfg.MaxFrameBytes), "")
	case ev.op != ws.OpText:
		return g.clientError(s, apierror.New(apierror.InvalidArgument, "only text frames holding JSON are accepted"), "")
	}
	return g.handleFrame(s, ev.payload)
}

// clientError answers a bad frame with an error frame. The connection stays
// open, unless the client keeps at it: past the abuse limit it is closed 1008.
func (g *Gateway) clientError(s *session, e *apierror.Error, clientMsgID string) error {
	g.metrics.clientErrors.WithLabelValues(string(e.Code)).Inc()
	s.enqueue(clientapi.ErrorFrame(string(e.Code), e.Message, clientMsgID))
	now := time.Now().Unix()
	c := s.callState()
	c.mu.Lock()
	defer c.mu.Unlock()
	if now-c.errWindow >= 10 {
		c.errWindow, c.errCount, c.rateErrors = now, 0, 0
	}
	if e.Code == apierror.RateLimited {
		c.rateErrors++
	} else if e.Code != apierror.NotFound && e.Code != apierror.Unavailable && e.Code != apierror.Internal {
		c.errCount++
	}
	if c.errCount > g.cfg.MaxBadFrames || c.rateErrors > 10*g.cfg.MaxBadFrames {
		return &protocolError{ws.StatusPolicyViolation, "too many bad frames"}
	}
	return nil
}

func (g *Gateway) handleFrame(s *session, payload []byte) error {
	if !s.frameLimit.allow(time.Since(monoEpoch), g.cfg.FrameRate, g.cfg.FrameBurst) {
		return g.clientError(s, apierror.New(apierror.RateLimited, "too many frames, slow down"), "")
	}
	f, e := clientapi.DecodeInFrame(payload)
	if e != nil {
		return g.clientError(s, e, "")
	}
	switch f.Type {
	case clientapi.TypePing:
		s.enqueue(pongFrame)
		return nil
	case clientapi.TypeSend:
		return g.handleSend(s, f.Data)
	case clientapi.TypeSync:
		return g.handleSync(s, f.Data)
	case clientapi.TypeRead:
		return g.handleRead(s, f.Data)
	case clientapi.TypeTyping:
		return g.handleTyping(s, f.Data)
	case "":
		return g.clientError(s, apierror.New(apierror.InvalidArgument, "frame has no type"), "")
	default:
		return g.clientError(s, apierror.New(apierror.InvalidArgument, "unknown frame type %q", f.Type), "")
	}
}

var pongFrame = clientapi.Frame(clientapi.TypePong, struct{}{})

// call queues a backend call for the session. Calls run off the reader (a
// slow im-logic must not stop the gateway from reading other clients), one
// at a time per session so that a client's sends keep their order, and at
// most maxInFlight wait: past that the client is told to slow down.
func (g *Gateway) call(s *session, clientMsgID string, fn func(context.Context) error) error {
	c := s.callState()
	c.mu.Lock()
	if len(c.queue) >= maxInFlight {
		c.mu.Unlock()
		return g.clientError(s, apierror.New(apierror.RateLimited, "%d requests in flight, wait for their answers", maxInFlight), clientMsgID)
	}
	c.queue = append(c.queue, fn)
	start := !c.running
	c.running = true
	c.mu.Unlock()
	if start {
		g.spawn(func() { g.runCalls(s) })
	}
	return nil
}

// runCalls runs the session's queued calls in order; the goroutine ends
// when the queue is empty.
func (g *Gateway) runCalls(s *session) {
	c := s.callState()
	for {
		c.mu.Lock()
		if len(c.queue) == 0 || s.isClosed() {
			c.queue, c.running = nil, false
			c.mu.Unlock()
			return
		}
		fn := c.queue[0]
		c.queue[0] = nil
		c.queue = c.queue[1:]
		ctx, cancel := context.WithTimeout(g.ctx, g.cfg.CallTimeout)
		c.cancel = cancel
		c.mu.Unlock()
		err := fn(ctx)
		cancel()
		s.touch(time.Now()) // a session whose calls run is alive, read or not
		var pe *protocolError
		if errors.As(err, &pe) {
			g.log.Info("closing session", "session_id", s.id, "user_id", s.userID, "status", pe.code, "reason", pe.reason)
			s.closeWith(pe.code, pe.reason)
		}
	}
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

func (g *Gateway) handleSend(s *session, raw json.RawMessage) error {
	var d clientapi.SendData
	if e := decodeData(raw, &d); e != nil {
		return g.clientError(s, e, "")
	}
	if d.ClientMsgID == "" {
		return g.clientError(s, apierror.New(apierror.InvalidArgument, "client_msg_id is required"), "")
	}
	// One budget per user across connections and HTTP: more connections
	// must not mean more sends.
	if !g.httpSend.allow(s.userID, time.Now()) {
		return g.clientError(s, apierror.New(apierror.RateLimited, "too many sends, at most %g per second", g.cfg.SendRate), d.ClientMsgID)
	}
	if len(d.Content) > g.cfg.MaxContentBytes {
		return g.clientError(s, apierror.New(apierror.PayloadTooLarge, "content is %d bytes, at most %d are allowed", len(d.Content), g.cfg.MaxContentBytes), d.ClientMsgID)
	}
	return g.call(s, d.ClientMsgID, func(ctx context.Context) error {
		r, err := g.sends.send(ctx, &gochatv1.SendRequest{
			CallerId: s.userID, SessionId: s.id, ConversationId: d.ConversationID, ToUserId: d.ToUserID,
			ClientMsgId: d.ClientMsgID, ContentType: d.ContentType, Content: d.Content,
		})
		if err != nil {
			return g.clientError(s, apierror.From(err), d.ClientMsgID)
		}
		g.metrics.sends.Inc()
		s.enqueue(clientapi.Frame(clientapi.TypeAck, clientapi.Ack{ClientMsgID: d.ClientMsgID, Message: clientapi.MessageFrom(r.Message)}))
		return nil
	})
}

func (g *Gateway) handleSync(s *session, raw json.RawMessage) error {
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
	return g.call(s, "", func(ctx context.Context) error {
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
	})
}

func (g *Gateway) handleRead(s *session, raw json.RawMessage) error {
	var d clientapi.ReadData
	if e := decodeData(raw, &d); e != nil {
		return g.clientError(s, e, "")
	}
	if d.ConversationID == "" || d.Seq == nil {
		return g.clientError(s, apierror.New(apierror.InvalidArgument, "read needs conversation_id and seq"), "")
	}
	return g.call(s, "", func(ctx context.Context) error {
		_, err := g.logic.MarkRead(ctx, &gochatv1.MarkReadRequest{CallerId: s.userID, SessionId: s.id, ConversationId: d.ConversationID, Seq: *d.Seq})
		if err != nil {
			return g.clientError(s, apierror.From(err), "")
		}
		return nil
	})
}
