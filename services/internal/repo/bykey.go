package repo

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"gorm.io/gorm"
)

// byPrimaryKey is a table named with MySQL's hint to use its primary key.
// A batch looks its conversations and members up by their whole primary
// key, yet MariaDB's optimizer picked members' user_id index (it holds the
// same columns) or scanned a small table, at three to ten times the cost
// of the key lookups (docs/benchmarks.md "The send path"). On the outbox
// the scan is worse than slow: under READ COMMITTED an UPDATE that scans
// waits on rows other transactions hold, and a relay's lease update waiting
// on a row a clear held deadlocked the two (TestOutboxUnderLoad).
func (s *Store) byPrimaryKey(table string) string {
	if s.mysql() {
		return table + " FORCE INDEX (PRIMARY)"
	}
	return table
}

// deleteChunk bounds the keys one DELETE names (the request allows
// MaxBatchIDs).
const deleteChunk = 500

// deleteByKey deletes the rows of table whose primary key, the column key,
// is one of keys. MySQL takes no index hint on a DELETE, and MariaDB scans
// a table it believes small (the outbox always is) instead of looking the
// keys up; the scan waits on every row another transaction holds, so a
// clear of the outbox and a relay's claim deadlocked. Joined to the keys as
// a derived table read first, each row is found by its key, and in sorted
// order, so two deletes that share rows lock them in one order.
func deleteByKey[K cmp.Ordered](s *Store, tx *gorm.DB, table, key string, keys []K) error {
	if len(keys) == 0 {
		return nil
	}
	if !s.mysql() {
		return tx.Exec("DELETE FROM "+table+" WHERE "+key+" IN ?", keys).Error
	}
	sorted := slices.Compact(slices.Sorted(slices.Values(keys)))
	for chunk := range slices.Chunk(sorted, deleteChunk) {
		var sb strings.Builder
		sb.WriteString("DELETE t FROM (SELECT ? AS k")
		sb.WriteString(strings.Repeat(" UNION ALL SELECT ?", len(chunk)-1))
		fmt.Fprintf(&sb, ") AS wanted STRAIGHT_JOIN %s AS t ON t.%s = wanted.k", table, key)
		args := make([]any, len(chunk))
		for i, k := range chunk {
			args[i] = k
		}
		if err := tx.Exec(sb.String(), args...).Error; err != nil {
			return err
		}
	}
	return nil
}
