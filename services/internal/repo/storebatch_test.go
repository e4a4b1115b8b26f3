package repo

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/ids"
	tc "github.com/gochat/gochat/services/testcluster"
)

// A batch that fails after it took its seqs is rolled back whole before its
// connection stores the next one. The store workers' connections are their
// own and reused: a transaction left open on one would be committed by the
// next batch's START TRANSACTION, its seq advance with it, and the
// conversation would skip a seq. The failure here is a content too long for
// its column (the API's checks refuse it first; this drives the store alone).
func TestFailedBatchRollsBack(t *testing.T) {
	ctx := context.Background()
	db, err := OpenDB(DBConfig{MySQLDSN: tc.FreshDatabase(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := Migrate(ctx, db, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	s := NewStore(db)
	user, conv := ids.New(), ids.New()
	if err := db.Create(&conversationRow{ID: conv, Name: "g", OwnerID: user, CreatedAtMs: 1, LastActivityMs: 1}).Error; err != nil {
		t.Fatal(err)
	}
	if err := db.Create(&memberRow{ConversationID: conv, UserID: user, JoinedAtMs: 1}).Error; err != nil {
		t.Fatal(err)
	}
	pool, err := openStoreDB(s, 1) // one connection: the next batch gets the failed one's
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	send := func(cmid, content string) ([]storeResult, error) {
		return s.storeBatchMySQL(ctx, pool, []*storeReq{{in: &gochatv1.StoreMessageRequest{
			ConversationId: conv, SenderId: user, ClientMsgId: cmid, ContentType: "text", Content: content,
		}}})
	}
	maxSeq := func() int64 {
		var c conversationRow
		if err := db.First(&c, "id = ?", conv).Error; err != nil {
			t.Fatal(err)
		}
		return c.MaxSeq
	}

	if _, err := send("too-long", strings.Repeat("x", 70_000)); err == nil || !strings.Contains(err.Error(), "store messages") {
		t.Fatalf("a content past its column stored: %v, want the writes to fail", err)
	}
	if got := maxSeq(); got != 0 {
		t.Fatalf("max_seq %d after the failed batch, want 0: its seq advance was kept", got)
	}
	res, err := send("next", "hi")
	if err != nil || res[0].err != nil {
		t.Fatalf("the next batch: %v %v", err, res)
	}
	if res[0].msg.Seq != 1 || maxSeq() != 1 {
		t.Fatalf("the next message has seq %d (max_seq %d), want 1: the failed batch's seq was committed", res[0].msg.Seq, maxSeq())
	}
	var n int64
	if err := db.Model(&messageRow{}).Where("conversation_id = ?", conv).Count(&n).Error; err != nil || n != 1 {
		t.Fatalf("%d messages stored (%v), want 1", n, err)
	}
}
