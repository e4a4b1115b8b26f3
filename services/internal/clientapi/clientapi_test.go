package clientapi

import (
	"encoding/json"
	"testing"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
)

func TestTimeJSON(t *testing.T) {
	b, _ := json.Marshal(Time(1795766400123)) // 2026-11-27T08:00:00.123Z
	if string(b) != `"2026-11-27T08:00:00.123Z"` {
		t.Fatalf("got %s", b)
	}
	var back Time
	if err := json.Unmarshal(b, &back); err != nil || back != 1795766400123 {
		t.Fatalf("round trip: %v %d", err, back)
	}
}

func TestConversationFrom(t *testing.T) {
	tests := []struct {
		name string
		in   *gochatv1.Conversation
		want string
	}{
		{
			name: "direct without messages",
			in: &gochatv1.Conversation{Id: "c", Type: gochatv1.ConversationType_CONVERSATION_TYPE_DIRECT,
				Members: []*gochatv1.Member{{UserId: "a", Role: gochatv1.Role_ROLE_MEMBER}}},
			want: `{"id":"c","type":"direct","name":"","owner_id":"","members":[{"user_id":"a","role":"member","read_seq":0}],"max_seq":0,"read_seq":0,"unread":0,"last_message":null,"created_at":"1970-01-01T00:00:00.000Z"}`,
		},
		{
			name: "group with unread",
			in: &gochatv1.Conversation{Id: "g", Type: gochatv1.ConversationType_CONVERSATION_TYPE_GROUP, Name: "n", OwnerId: "o",
				MaxSeq: 42, ReadSeq: 40, LastMessage: &gochatv1.Message{Id: "m", Seq: 42, ContentType: "text", Content: "hi"}},
			want: `{"id":"g","type":"group","name":"n","owner_id":"o","members":[],"max_seq":42,"read_seq":40,"unread":2,"last_message":{"id":"m","conversation_id":"","seq":42,"sender_id":"","client_msg_id":"","content_type":"text","content":"hi","created_at":"1970-01-01T00:00:00.000Z"},"created_at":"1970-01-01T00:00:00.000Z"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := json.Marshal(ConversationFrom(tt.in))
			if string(b) != tt.want {
				t.Fatalf("got  %s\nwant %s", b, tt.want)
			}
		})
	}
}

func TestFrames(t *testing.T) {
	if got := string(ErrorFrame("invalid_argument", "bad", "")); got != `{"type":"error","data":{"code":"invalid_argument","message":"bad"}}` {
		t.Fatal(got)
	}
	if got := string(Frame(TypePong, struct{}{})); got != `{"type":"pong","data":{}}` {
		t.Fatal(got)
	}
}

// BenchmarkMessageFrame is the per-message encoding im-task does once per
// message, whatever the number of recipients.
func BenchmarkMessageFrame(b *testing.B) {
	m := &gochatv1.Message{Id: "06h1s1vps3z2gv1neczt3pdf08", ConversationId: "06h1s1vpcnk0jx6a6x2wwsrqf4", Seq: 42,
		SenderId: "06h1s1vnfzft4fccqwq7cj9rk4", ClientMsgId: "c-42", ContentType: "text", Content: "hello, this is a chat message of ordinary length", CreatedAtMs: 1795766400123}
	b.ReportAllocs()
	for b.Loop() {
		_ = Frame(TypeMessage, MessageFrom(m))
	}
}
