package repo

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"slices"
	"strings"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/gorm"

	"github.com/gochat/gochat/services/internal/apierror"
	"github.com/gochat/gochat/services/internal/ids"
)

// A store batch is the group commit: dedupe on (sender, client_msg_id), check
// membership, take seqs from the locked conversation rows, insert the
// messages and their outbox rows, and mark the senders' own messages read.
// Seqs come from the database under the row lock in the same transaction as
// the insert, so they never go back, are never reused and leave no gap: a
// rolled-back batch gives its seqs back with it.
//
// The batch's statements are built once (storePlan) and run two ways. On
// MySQL they go in three round trips on a connection that takes several
// statements at once (storeBatchMySQL): the worker is the send path's
// critical section, and each round trip is a wait for MariaDB's thread and
// then for the worker's own to be scheduled, which on a busy machine cost
// more than the statements (docs/benchmarks.md "The send path"). On SQLite
// they run one by one in a gorm transaction (storeBatchTx).

// insertChunk bounds the rows of one INSERT (SQLite takes at most 32,766
// arguments a statement; a message row has 8).
const insertChunk = 500

type senderKey struct{ sender, clientMsgID string }

// stmt is one SQL statement and its arguments.
type stmt struct {
	sql  string
	args []any
}

// joined is stmts as one multi-statement string.
func joined(stmts ...stmt) stmt {
	var out stmt
	for i, st := range stmts {
		if i > 0 {
			out.sql += "; "
		}
		out.sql += st.sql
		out.args = append(out.args, st.args...)
	}
	return out
}

// storePlan is one batch on its way through the three steps: look up, take
// seqs, write. Its methods build the statements and read their answers; they
// touch no database.
type storePlan struct {
	s       *Store
	batch   []*storeReq
	results []storeResult
	// first[k] is the index of the batch entry that stores key k; later
	// entries with the same key copy its result.
	first map[senderKey]int
	// ok are the entries to insert, in batch order.
	ok      []int
	count   map[string]int64
	convIDs []string // sorted: one lock order for every batch, so no deadlocks between them
	now     int64
	rows    []messageRow
}

func newStorePlan(s *Store, batch []*storeReq) *storePlan {
	return &storePlan{s: s, batch: batch, results: make([]storeResult, len(batch)), first: map[senderKey]int{}, count: map[string]int64{}}
}

const messageColumns = "id, conversation_id, seq, sender_id, client_msg_id, content_type, content, created_at_ms"

// lookups are the dedupe lookup (messages already stored under the batch's
// (sender, client_msg_id) keys) and the membership check of every sender.
func (p *storePlan) lookups() (dedupe, members stmt) {
	dedupe.sql = "SELECT " + messageColumns + " FROM messages WHERE " + pairIn("sender_id", "client_msg_id", len(p.batch))
	members.sql = "SELECT conversation_id, user_id FROM " + p.s.byPrimaryKey("members") + " WHERE " + pairIn("conversation_id", "user_id", len(p.batch))
	for _, r := range p.batch {
		dedupe.args = append(dedupe.args, r.in.SenderId, r.in.ClientMsgId)
		members.args = append(members.args, r.in.ConversationId, r.in.SenderId)
	}
	return dedupe, members
}

// decide answers the duplicates and the senders who are not members, and
// picks what to insert.
func (p *storePlan) decide(existing []messageRow, members []memberRow) {
	known := make(map[senderKey]*messageRow, len(existing))
	for i := range existing {
		known[senderKey{existing[i].SenderID, existing[i].ClientMsgID}] = &existing[i]
	}
	isMember := make(map[[2]string]bool, len(members))
	for _, m := range members {
		isMember[[2]string{m.ConversationID, m.UserID}] = true
	}
	for i, r := range p.batch {
		k := senderKey{r.in.SenderId, r.in.ClientMsgId}
		if m, ok := known[k]; ok {
			p.results[i] = dupResult(m, r.in.ConversationId)
			continue
		}
		if _, ok := p.first[k]; ok {
			continue
		}
		p.first[k] = i
		if !isMember[[2]string{r.in.ConversationId, r.in.SenderId}] {
			p.results[i] = storeResult{err: apierror.New(apierror.NotFound, "conversation not found")}
			continue
		}
		p.count[r.in.ConversationId]++
		p.ok = append(p.ok, i)
	}
	for id := range p.count {
		p.convIDs = append(p.convIDs, id)
	}
	slices.Sort(p.convIDs)
}

// takeSeqs advances the conversations' seqs with the UPDATE that locks
// their rows, then reads where they ended: the transaction sees its own
// change, and the row lock holds every other writer of these conversations
// off until the commit.
func (p *storePlan) takeSeqs() (advance, read stmt) {
	p.now = p.s.nowMs()
	var sb strings.Builder
	sb.WriteString("UPDATE " + p.s.byPrimaryKey("conversations") + " SET max_seq = max_seq + CASE id")
	for _, id := range p.convIDs {
		sb.WriteString(" WHEN ? THEN ?")
		advance.args = append(advance.args, id, p.count[id])
	}
	sb.WriteString(" ELSE 0 END, last_activity_ms = ? WHERE id IN (" + placeholders(len(p.convIDs)) + ")")
	advance.args = append(advance.args, p.now)
	for _, id := range p.convIDs {
		advance.args = append(advance.args, id)
	}
	advance.sql = sb.String()
	read.sql = "SELECT id, max_seq FROM " + p.s.byPrimaryKey("conversations") + " WHERE id IN (" + placeholders(len(p.convIDs)) + ")"
	for _, id := range p.convIDs {
		read.args = append(read.args, id)
	}
	return advance, read
}

// writes numbers the messages from the seqs read and builds their inserts,
// their outbox rows and the senders' read marks.
func (p *storePlan) writes(convs []conversationRow) ([]stmt, error) {
	if len(convs) != len(p.convIDs) {
		return nil, fmt.Errorf("read seqs: %d of %d conversations found", len(convs), len(p.convIDs))
	}
	next := make(map[string]int64, len(convs))
	for _, c := range convs {
		next[c.ID] = c.MaxSeq - p.count[c.ID] // the last seq before this batch
	}
	p.rows = make([]messageRow, 0, len(p.ok))
	readUpTo := map[[2]string]int64{}
	var marks [][2]string // in first-seen order, for a statement that does not depend on map order
	for _, i := range p.ok {
		in := p.batch[i].in
		next[in.ConversationId]++
		row := messageRow{
			ID: ids.New(), ConversationID: in.ConversationId, Seq: next[in.ConversationId], SenderID: in.SenderId,
			ClientMsgID: in.ClientMsgId, ContentType: in.ContentType, Content: in.Content, CreatedAtMs: p.now,
		}
		p.rows = append(p.rows, row)
		k := [2]string{in.ConversationId, in.SenderId}
		if _, seen := readUpTo[k]; !seen {
			marks = append(marks, k)
		}
		readUpTo[k] = row.Seq
	}

	var out []stmt
	for chunk := range slices.Chunk(p.rows, insertChunk) {
		st := stmt{sql: "INSERT INTO messages (" + messageColumns + ") VALUES " +
			strings.TrimSuffix(strings.Repeat("(?, ?, ?, ?, ?, ?, ?, ?), ", len(chunk)), ", ")}
		for _, r := range chunk {
			st.args = append(st.args, r.ID, r.ConversationID, r.Seq, r.SenderID, r.ClientMsgID, r.ContentType, r.Content, r.CreatedAtMs)
		}
		out = append(out, st)
	}
	for chunk := range slices.Chunk(p.rows, insertChunk) {
		st := stmt{sql: "INSERT INTO outbox (message_id, stored_at_ms, lease_until_ms) VALUES " +
			strings.TrimSuffix(strings.Repeat("(?, ?, 0), ", len(chunk)), ", ")}
		for _, r := range chunk {
			st.args = append(st.args, r.ID, p.now)
		}
		out = append(out, st)
	}

	// The sender has read their own message: one statement for the batch.
	var sb strings.Builder
	var mark stmt
	sb.WriteString("UPDATE " + p.s.byPrimaryKey("members") + " SET read_seq = CASE")
	for _, k := range marks {
		seq := readUpTo[k]
		sb.WriteString(" WHEN conversation_id = ? AND user_id = ? AND read_seq < ? THEN ?")
		mark.args = append(mark.args, k[0], k[1], seq, seq)
	}
	sb.WriteString(" ELSE read_seq END WHERE " + pairIn("conversation_id", "user_id", len(marks)))
	for _, k := range marks {
		mark.args = append(mark.args, k[0], k[1])
	}
	mark.sql = sb.String()
	return append(out, mark), nil
}

// done answers the stored messages and the batch's repeats of their keys.
func (p *storePlan) done() []storeResult {
	for n, i := range p.ok {
		p.results[i] = storeResult{msg: messageToProto(&p.rows[n])}
	}
	for i, r := range p.batch {
		j, ok := p.first[senderKey{r.in.SenderId, r.in.ClientMsgId}]
		if ok && j != i {
			res := p.results[j]
			if res.err == nil {
				if res.msg.ConversationId != r.in.ConversationId {
					res = storeResult{err: reusedIDError(r.in.ClientMsgId)}
				} else {
					res.dup = true
				}
			}
			p.results[i] = res
		}
	}
	messagesStored.Add(float64(len(p.rows)))
	return p.results
}

// pairIn matches n (a, b) pairs, its arguments a1, b1, a2, b2, ... MariaDB
// turns a one-pair IN list into a row comparison that an UPDATE cannot look
// up by key: the read mark of a message stored alone (any batch of one) read
// the whole members table, so a store took longer the more members the
// database held (TestStoreReadsByKey). One pair is written as equalities.
func pairIn(a, b string, n int) string {
	if n == 1 {
		return a + " = ? AND " + b + " = ?"
	}
	return "(" + a + ", " + b + ") IN (" + strings.TrimSuffix(strings.Repeat("(?, ?), ", n), ", ") + ")"
}

func dupResult(m *messageRow, convID string) storeResult {
	if m.ConversationID != convID {
		return storeResult{err: reusedIDError(m.ClientMsgID)}
	}
	return storeResult{msg: messageToProto(m), dup: true}
}

func reusedIDError(clientMsgID string) error {
	return apierror.New(apierror.AlreadyExists, "client_msg_id %q was already used for a message in another conversation", clientMsgID)
}

// storeBatchTx runs a batch's statements one by one in tx (SQLite).
func (s *Store) storeBatchTx(tx *gorm.DB, batch []*storeReq) ([]storeResult, error) {
	p := newStorePlan(s, batch)
	dedupe, members := p.lookups()
	var existing []messageRow
	if err := tx.Raw(dedupe.sql, dedupe.args...).Scan(&existing).Error; err != nil {
		return nil, fmt.Errorf("look up client_msg_ids: %w", err)
	}
	var found []memberRow
	if err := tx.Raw(members.sql, members.args...).Scan(&found).Error; err != nil {
		return nil, fmt.Errorf("check membership: %w", err)
	}
	p.decide(existing, found)
	if len(p.ok) == 0 {
		return p.done(), nil
	}
	advance, read := p.takeSeqs()
	if err := tx.Exec(advance.sql, advance.args...).Error; err != nil {
		return nil, fmt.Errorf("advance seqs: %w", err)
	}
	var convs []conversationRow
	if err := tx.Raw(read.sql, read.args...).Scan(&convs).Error; err != nil {
		return nil, fmt.Errorf("read seqs: %w", err)
	}
	writes, err := p.writes(convs)
	if err != nil {
		return nil, err
	}
	for _, w := range writes {
		if err := tx.Exec(w.sql, w.args...).Error; err != nil {
			return nil, fmt.Errorf("store messages: %w", err)
		}
	}
	return p.done(), nil
}

// storeBatchMySQL runs a batch in one READ COMMITTED transaction
// (readCommittedTx says why) in three round trips on conn, a connection
// that takes several statements at once: begin with the lookups, take the
// seqs, write and commit. Whatever fails, the transaction is rolled back
// before conn goes back to its pool, or conn is closed.
func (s *Store) storeBatchMySQL(ctx context.Context, db *sql.DB, batch []*storeReq) ([]storeResult, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("store connection: %w", err)
	}
	defer conn.Close()
	committed := false
	defer func() {
		if committed {
			return
		}
		if _, rerr := conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK"); rerr != nil {
			// A connection in an unknown state must not serve the next batch.
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
	}()

	p := newStorePlan(s, batch)
	dedupe, members := p.lookups()
	begin := joined(stmt{sql: "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"}, stmt{sql: "START TRANSACTION"}, dedupe, members)
	var existing []messageRow
	var found []memberRow
	err = querySets(ctx, conn, begin, func(rows *sql.Rows) error {
		var m messageRow
		if err := rows.Scan(&m.ID, &m.ConversationID, &m.Seq, &m.SenderID, &m.ClientMsgID, &m.ContentType, &m.Content, &m.CreatedAtMs); err != nil {
			return err
		}
		existing = append(existing, m)
		return nil
	}, func(rows *sql.Rows) error {
		var m memberRow
		if err := rows.Scan(&m.ConversationID, &m.UserID); err != nil {
			return err
		}
		found = append(found, m)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("look up client_msg_ids and members: %w", err)
	}
	p.decide(existing, found)
	if len(p.ok) == 0 {
		return p.done(), nil // nothing written: the deferred ROLLBACK ends it
	}

	advance, read := p.takeSeqs()
	var convs []conversationRow
	err = querySets(ctx, conn, joined(advance, read), func(rows *sql.Rows) error {
		var c conversationRow
		if err := rows.Scan(&c.ID, &c.MaxSeq); err != nil {
			return err
		}
		convs = append(convs, c)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("take seqs: %w", err)
	}
	writes, err := p.writes(convs)
	if err != nil {
		return nil, err
	}
	w := joined(append(writes, stmt{sql: "COMMIT"})...)
	if _, err := conn.ExecContext(ctx, w.sql, w.args...); err != nil {
		return nil, fmt.Errorf("store messages: %w", err)
	}
	committed = true
	return p.done(), nil
}

// querySets runs a multi-statement query and reads its result sets in
// order, each row of set i with scans[i]; the statements that answer no set
// (START TRANSACTION, an UPDATE) are skipped by the driver.
func querySets(ctx context.Context, conn *sql.Conn, st stmt, scans ...func(*sql.Rows) error) error {
	rows, err := conn.QueryContext(ctx, st.sql, st.args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for i, scan := range scans {
		if i > 0 && !rows.NextResultSet() {
			if err := rows.Err(); err != nil {
				return err
			}
			return fmt.Errorf("%d of %d result sets", i, len(scans))
		}
		for rows.Next() {
			if err := scan(rows); err != nil {
				return err
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
	}
	return rows.Close()
}

// openStoreDB opens the store workers' own pool on MySQL: the same DSN with
// several statements a query allowed, which only the store batch's
// statements use (the rest of im-repo keeps one statement a call). nil on
// SQLite.
func openStoreDB(s *Store, conns int) (*sql.DB, error) {
	if !s.mysql() {
		return nil, nil
	}
	dsn := dialectorDSN(s.db)
	if dsn == "" {
		return nil, errors.New("store pool: the MySQL dialector has no DSN")
	}
	c, err := gomysql.ParseDSN(dsn)
	if err != nil {
		return nil, fmt.Errorf("store pool: %w", err)
	}
	c.MultiStatements = true
	c.InterpolateParams = true
	connector, err := gomysql.NewConnector(c)
	if err != nil {
		return nil, fmt.Errorf("store pool: %w", err)
	}
	db := sql.OpenDB(connector)
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	db.SetConnMaxLifetime(connMaxLifetime)
	return db, nil
}
