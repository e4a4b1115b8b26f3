package repo

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"gorm.io/gorm"

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
	db := migratedMySQL(ctx, t)
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

// TestStoreReadsByKey counts the rows MariaDB reads for a store batch while
// the members table holds thousands of rows of other conversations: every
// statement must find its rows by key. A message stored alone used to mark
// its sender's read with a one-pair IN list, which MariaDB ran as a scan of
// the whole table, so the send path slowed as the database grew.
func TestStoreReadsByKey(t *testing.T) {
	ctx := context.Background()
	db := migratedMySQL(ctx, t)
	s := NewStore(db)
	const others = 3000
	filler := make([]memberRow, others)
	for i := range filler {
		filler[i] = memberRow{ConversationID: ids.New(), UserID: ids.New(), JoinedAtMs: 1}
	}
	if err := db.CreateInBatches(filler, 500).Error; err != nil {
		t.Fatal(err)
	}
	user, convA, convB := ids.New(), ids.New(), ids.New()
	for _, c := range []string{convA, convB} {
		if err := db.Create(&conversationRow{ID: c, Name: "g", OwnerID: user, CreatedAtMs: 1, LastActivityMs: 1}).Error; err != nil {
			t.Fatal(err)
		}
		if err := db.Create(&memberRow{ConversationID: c, UserID: user, JoinedAtMs: 1}).Error; err != nil {
			t.Fatal(err)
		}
	}
	pool, err := openStoreDB(s, 1) // one connection: its session counters are the batch's
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	scanned := func() int64 { return rowsWalked(ctx, t, pool) }
	n := 0
	for _, tt := range []struct {
		name  string
		convs []string
	}{
		{"one message", []string{convA}},
		{"two conversations", []string{convA, convB}},
		{"three in one conversation", []string{convB, convB, convB}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var batch []*storeReq
			for _, c := range tt.convs {
				n++
				batch = append(batch, &storeReq{in: &gochatv1.StoreMessageRequest{
					ConversationId: c, SenderId: user, ClientMsgId: fmt.Sprintf("m%d", n), ContentType: "text", Content: "hi",
				}})
			}
			before := scanned()
			res, err := s.storeBatchMySQL(ctx, pool, batch)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range res {
				if r.err != nil || r.msg == nil {
					t.Fatalf("store: %+v", r)
				}
			}
			if got := scanned() - before; got > 50 {
				t.Fatalf("a batch of %d read %d rows by scan or index walk beside %d members of other conversations, want a handful: a statement does not use its key", len(batch), got, others)
			}
		})
	}
}

// TestExpireGuestsReadsByIndex counts the rows MariaDB reads for one guest
// sweep beside thousands of registered users and young guests: the sweep
// runs every minute on every repo replica, and before its index it read the
// whole users table each time.
func TestExpireGuestsReadsByIndex(t *testing.T) {
	ctx := context.Background()
	db := migratedMySQL(ctx, t)
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	sqlDB.SetMaxOpenConns(1) // the session counters below are the sweep's
	s := NewStore(db)
	const others = 3000
	var rows []userRow
	for i := range others {
		// Registered users and guests younger than the cutoff: never deleted.
		rows = append(rows, userRow{ID: ids.New(), Username: fmt.Sprintf("u%d", i), Guest: i%2 == 0, CreatedAtMs: 2_000_000})
	}
	var old []string
	for i := range 5 {
		id := ids.New()
		old = append(old, id)
		rows = append(rows, userRow{ID: id, Username: fmt.Sprintf("old%d", i), Guest: true, CreatedAtMs: 1_000_000 + int64(i)})
	}
	if err := db.CreateInBatches(rows, 500).Error; err != nil {
		t.Fatal(err)
	}
	scanned := func() int64 { return rowsWalked(ctx, t, sqlDB) }
	before := scanned()
	n, err := s.ExpireGuests(ctx, 1_500_000, 500)
	if err != nil || n != len(old) {
		t.Fatalf("ExpireGuests = %d, %v; want the %d old guests", n, err, len(old))
	}
	if got := scanned() - before; got > 100 {
		t.Fatalf("a sweep that deleted %d guests read %d rows by scan or index walk beside %d other users: it does not use its index", n, got, others)
	}
}

func migratedMySQL(ctx context.Context, t *testing.T) *gorm.DB {
	t.Helper()
	db, err := OpenDB(DBConfig{MySQLDSN: tc.FreshDatabase(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := Migrate(ctx, db, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	return db
}

// rowsWalked is how many rows MariaDB has read on conn's one connection by
// scanning a table or walking an index (its session's handler counters,
// which reading them does not move): a statement that finds its rows by key
// adds next to nothing.
func rowsWalked(ctx context.Context, t *testing.T, conn *sql.DB) int64 {
	t.Helper()
	rows, err := conn.QueryContext(ctx, "SHOW SESSION STATUS WHERE Variable_name IN ('Handler_read_next', 'Handler_read_prev', 'Handler_read_rnd_next')")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var sum int64
	for rows.Next() {
		var name string
		var n int64
		if err := rows.Scan(&name, &n); err != nil {
			t.Fatal(err)
		}
		sum += n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return sum
}
