package gateway

import (
	"encoding/binary"
	"errors"

	"github.com/gobwas/ws"
)

// maxHeaderBytes is the longest WebSocket frame header: 2 bytes, an 8-byte
// length and a 4-byte mask.
const maxHeaderBytes = 14

var errBadLength = errors.New("frame length has its most significant bit set")

// parseHeader parses a frame header from the start of b. ok is false while b
// holds only part of a header; n is the header's length in bytes.
func parseHeader(b []byte) (h ws.Header, n int, ok bool, err error) {
	if len(b) < 2 {
		return h, 0, false, nil
	}
	h.Fin = b[0]&0x80 != 0
	h.Rsv = (b[0] & 0x70) >> 4
	h.OpCode = ws.OpCode(b[0] & 0x0f)
	h.Masked = b[1]&0x80 != 0
	n = 2
	switch l := b[1] & 0x7f; l {
	case 126:
		if len(b) < n+2 {
			return h, 0, false, nil
		}
		h.Length = int64(binary.BigEndian.Uint16(b[n:]))
		n += 2
	case 127:
		if len(b) < n+8 {
			return h, 0, false, nil
		}
		u := binary.BigEndian.Uint64(b[n:])
		if u>>63 != 0 {
			return h, 0, false, errBadLength
		}
		h.Length = int64(u)
		n += 8
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		if len(b) < n+4 {
			return h, 0, false, nil
		}
		copy(h.Mask[:], b[n:n+4])
		n += 4
	}
	return h, n, true, nil
}

// frameReader is a session's parse state between reads: a socket that has
// sent half a frame leaves its half here and gives the reader back at once,
// instead of holding a shared reader until the rest arrives.
type frameReader struct {
	hbuf     []byte    // bytes of a header not yet complete (at most maxHeaderBytes)
	cur      ws.Header // the frame whose payload is being read, if inFrame
	inFrame  bool
	pos      int64  // payload bytes of cur read so far
	ctl      []byte // payload of a control frame (at most 125 bytes)
	frag     []byte // the data message so far, unmasked
	fragOp   ws.OpCode
	inMsg    bool  // a data message has begun and not yet ended
	tooBig   bool  // the message is over the limit: its bytes are skipped
	msgBytes int64 // bytes of the message so far, skipped ones too
}

// pending reports whether a frame has begun and not ended.
func (r *frameReader) pending() bool { return len(r.hbuf) > 0 || r.inFrame || r.inMsg }

// frameEvent is what feed hands its caller: a control frame or a complete
// data message (tooBig: it was skipped, only its end is reported).
type frameEvent struct {
	op      ws.OpCode
	payload []byte
	tooBig  bool
}

// feed consumes data and calls emit for each control frame and complete
// message, in order. maxMessage bounds a message's bytes across all its
// fragments; a message over maxMessage is skipped and reported as tooBig, and
// one over 16 × maxMessage is a protocol error (reading it all would let one
// client waste the gateway's time). emit may stop the parse by returning an
// error. A violation returns a *protocolError.
func (r *frameReader) feed(data []byte, maxMessage int, emit func(frameEvent) error) error {
	for len(data) > 0 || (r.inFrame && r.pos == r.cur.Length) {
		if !r.inFrame {
			take := min(maxHeaderBytes-len(r.hbuf), len(data))
			before := len(r.hbuf)
			r.hbuf = append(r.hbuf, data[:take]...)
			h, n, ok, err := parseHeader(r.hbuf)
			if err != nil {
				return &protocolError{ws.StatusProtocolError, err.Error()}
			}
			if !ok {
				data = data[take:]
				continue
			}
			data = data[n-before:]
			r.hbuf = r.hbuf[:0]
			if err := r.begin(h, maxMessage); err != nil {
				return err
			}
			continue
		}
		if r.pos < r.cur.Length {
			k := int(min(r.cur.Length-r.pos, int64(len(data))))
			chunk := data[:k]
			data = data[k:]
			switch {
			case r.cur.OpCode.IsControl():
				start := len(r.ctl)
				r.ctl = append(r.ctl, chunk...)
				ws.Cipher(r.ctl[start:], r.cur.Mask, int(r.pos))
			case !r.tooBig:
				start := len(r.frag)
				r.frag = append(r.frag, chunk...)
				ws.Cipher(r.frag[start:], r.cur.Mask, int(r.pos))
			}
			r.pos += int64(k)
			if r.pos < r.cur.Length {
				continue
			}
		}
		// The frame is complete.
		r.inFrame = false
		h := r.cur
		if h.OpCode.IsControl() {
			p := r.ctl
			r.ctl = nil
			if err := emit(frameEvent{op: h.OpCode, payload: p}); err != nil {
				return err
			}
			continue
		}
		if !h.Fin {
			continue
		}
		ev := frameEvent{op: r.fragOp, payload: r.frag, tooBig: r.tooBig}
		r.frag, r.inMsg, r.tooBig, r.msgBytes = nil, false, false, 0
		if err := emit(ev); err != nil {
			return err
		}
	}
	if len(r.hbuf) == 0 && cap(r.hbuf) > 0 && !r.inFrame {
		r.hbuf = nil // an idle session holds no buffer
	}
	return nil
}

// begin checks a new frame's header and sets up reading its payload.
func (r *frameReader) begin(h ws.Header, maxMessage int) error {
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
		if h.OpCode != ws.OpClose && h.OpCode != ws.OpPing && h.OpCode != ws.OpPong {
			return &protocolError{ws.StatusProtocolError, "unknown control opcode"}
		}
	} else {
		switch {
		case h.OpCode == ws.OpContinuation && !r.inMsg:
			return &protocolError{ws.StatusProtocolError, "continuation frame without a message"}
		case h.OpCode != ws.OpContinuation && r.inMsg:
			return &protocolError{ws.StatusProtocolError, "new message before the last one ended"}
		case h.OpCode != ws.OpText && h.OpCode != ws.OpBinary && h.OpCode != ws.OpContinuation:
			return &protocolError{ws.StatusProtocolError, "unknown data opcode"}
		case h.OpCode != ws.OpContinuation:
			r.inMsg, r.fragOp, r.tooBig, r.frag, r.msgBytes = true, h.OpCode, false, nil, 0
		}
		r.msgBytes += h.Length
		if r.msgBytes > int64(maxMessage)*16 {
			return &protocolError{ws.StatusMessageTooBig, "message far over the frame limit"}
		}
		if r.msgBytes > int64(maxMessage) {
			r.tooBig, r.frag = true, nil
		}
	}
	r.cur, r.inFrame, r.pos = h, true, 0
	return nil
}
