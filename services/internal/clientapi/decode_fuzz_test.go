package clientapi

import (
	"encoding/json"
	"testing"
)

// FuzzDecodeInFrame: any bytes give a frame with a type or a clear
// invalid_argument error, never a panic; and the data of each type decodes
// into its struct or fails cleanly.
func FuzzDecodeInFrame(f *testing.F) {
	for _, s := range []string{
		`{"type":"ping"}`,
		`{"type":"send","data":{"client_msg_id":"a","conversation_id":"c","content":"<&\""}}`,
		`{"type":"sync","data":{"conversation_id":"c","after_seq":0,"limit":200}}`,
		`{"type":"read","data":{"conversation_id":"c","seq":3}}`,
		`{"type":""}`, `[]`, `null`, `{"type":1}`, `{"data":{}}`, "\xff",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, e := DecodeInFrame(b)
		if e != nil {
			if e.Code != "invalid_argument" || e.Message == "" {
				t.Fatalf("error %+v", e)
			}
			return
		}
		if fr.Type == "" {
			t.Fatal("a frame without a type was accepted")
		}
		var send SendData
		var sync SyncData
		var read ReadData
		for _, v := range []any{&send, &sync, &read} {
			_ = json.Unmarshal(fr.Data, v)
		}
	})
}
