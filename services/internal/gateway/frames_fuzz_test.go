package gateway

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/gobwas/ws"
)

// FuzzFrameReader feeds arbitrary bytes, split at an arbitrary point, to the
// frame reader. It must never panic, never hold more than the message limit,
// and must report the same messages however the bytes are split.
func FuzzFrameReader(f *testing.F) {
	var seed bytes.Buffer
	for _, fr := range []ws.Frame{
		ws.MaskFrame(ws.NewTextFrame([]byte(`{"type":"ping"}`))),
		ws.MaskFrame(ws.NewFrame(ws.OpText, false, []byte(`{"type":`))),
		ws.MaskFrame(ws.NewFrame(ws.OpPing, true, []byte("hb"))),
		ws.MaskFrame(ws.NewFrame(ws.OpContinuation, true, []byte(`"ping"}`))),
		ws.MaskFrame(ws.NewTextFrame(bytes.Repeat([]byte("x"), 300))),
		ws.MaskFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye"))),
	} {
		_ = ws.WriteFrame(&seed, fr)
	}
	f.Add(seed.Bytes(), 7)
	f.Add([]byte{0x81}, 0)
	f.Add([]byte{0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}, 3)
	f.Add([]byte{0x01, 0x85, 1, 2, 3, 4, 'a', 'b', 'c', 'd', 'e', 0x80, 0x80, 1, 2, 3, 4}, 9)
	const limit = 256
	run := func(data []byte, split int) (events []frameEvent, err error) {
		var r frameReader
		emit := func(ev frameEvent) error {
			if len(ev.payload) > limit {
				panic(fmt.Sprintf("a message of %d bytes, over the %d limit, was kept", len(ev.payload), limit))
			}
			events = append(events, frameEvent{op: ev.op, payload: append([]byte(nil), ev.payload...), tooBig: ev.tooBig})
			return nil
		}
		if err = r.feed(data[:split], limit, emit); err != nil {
			return events, err
		}
		if len(r.frag) > limit || len(r.hbuf) > maxHeaderBytes || len(r.ctl) > 125 {
			panic("frame reader holds more than its bounds")
		}
		err = r.feed(data[split:], limit, emit)
		return events, err
	}
	f.Fuzz(func(t *testing.T, data []byte, split int) {
		if split < 0 {
			split = -split
		}
		if len(data) > 0 {
			split %= len(data) + 1
		} else {
			split = 0
		}
		a, errA := run(data, split)
		b, errB := run(data, 0)
		if (errA == nil) != (errB == nil) || len(a) != len(b) {
			t.Fatalf("split at %d: %d events (%v), whole: %d events (%v)", split, len(a), errA, len(b), errB)
		}
		for i := range a {
			if a[i].op != b[i].op || a[i].tooBig != b[i].tooBig || !bytes.Equal(a[i].payload, b[i].payload) {
				t.Fatalf("event %d differs with the split at %d", i, split)
			}
		}
	})
}
