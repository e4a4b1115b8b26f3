package repo

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/apierror"
)

// recordEvent writes a group or read event to the event outbox in tx, the
// transaction of the change it tells about: the change and its event commit
// together, so a Kafka outage cannot lose the event.
func recordEvent(tx *gorm.DB, convID string, ev *gochatv1.DispatchEvent, nowMs int64) (*gochatv1.OutboxEvent, error) {
	b, err := proto.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	row := eventOutboxRow{ConversationID: convID, Event: b, StoredAtMs: nowMs}
	if err := tx.Create(&row).Error; err != nil {
		return nil, fmt.Errorf("record event in the outbox: %w", err)
	}
	var older []int64
	if err := tx.Model(&eventOutboxRow{}).Where("conversation_id = ? AND id < ? AND stored_at_ms < ?", convID, row.ID, nowMs-EventBacklogAge.Milliseconds()).
		Limit(1).Pluck("id", &older).Error; err != nil {
		return nil, fmt.Errorf("look for the conversation's waiting events: %w", err)
	}
	return &gochatv1.OutboxEvent{Id: strconv.FormatInt(row.ID, 10), Event: ev, Behind: len(older) > 0}, nil
}

// EventBacklogAge is how long an event may wait in the outbox before the
// conversation's next events are held behind it: far longer than a publish
// and the clearing of its row (a fraction of a second), far shorter than a
// Kafka outage.
const EventBacklogAge = 2 * time.Second

func groupEvent(kind gochatv1.GroupEventKind, convID, actor string, users []string, extra ...string) *gochatv1.DispatchEvent {
	return &gochatv1.DispatchEvent{
		Event:           &gochatv1.DispatchEvent_Group{Group: &gochatv1.GroupEvent{Kind: kind, ConversationId: convID, UserIds: users, ActorId: actor}},
		ExtraRecipients: extra,
	}
}

// eventIDs parses outbox event ids.
func eventIDs(in []string) ([]int64, error) {
	out := make([]int64, len(in))
	for i, s := range in {
		id, err := strconv.ParseInt(s, 10, 64)
		if err != nil || id <= 0 {
			return nil, apierror.New(apierror.InvalidArgument, "event_ids[%d] is not an event id: %q", i, s)
		}
		out[i] = id
	}
	return out, nil
}

// AckEvents removes events Kafka has taken from the outbox.
func (s *Store) AckEvents(ctx context.Context, ids []int64) error {
	// READ COMMITTED as AckDispatched, for the same reason: an id cleared
	// twice must not gap-lock the end of the table that events insert into.
	err := s.readCommittedTx(ctx, func(tx *gorm.DB) error {
		return deleteByKey(s, tx, "event_outbox", "id", ids)
	})
	if err != nil {
		return fmt.Errorf("clear event outbox: %w", err)
	}
	return nil
}

// eventScanFactor is how many rows past limit a claim looks at, so that
// rows of conversations another relay holds do not leave it short.
const eventScanFactor = 4

// ListUndispatchedEvents claims up to limit events stored before a time, for
// lease, and returns them in id order. A conversation's events are relayed
// in order: a claim never takes an event of a conversation while another
// relay holds (has leased) some of its events. On MySQL it locks the oldest
// free rows first with a blocking FOR UPDATE, not SKIP LOCKED: a relay that
// claims at the same moment waits for the other's commit, and then sees its
// leases when it looks for the conversations held.
func (s *Store) ListUndispatchedEvents(ctx context.Context, storedBeforeMs int64, limit int, lease time.Duration) ([]*gochatv1.OutboxEvent, error) {
	now := s.nowMs()
	var claimed []eventOutboxRow
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		lock := func(q *gorm.DB) *gorm.DB {
			if s.mysql() {
				return q.Clauses(clause.Locking{Strength: "UPDATE"})
			}
			return q
		}
		var rows []eventOutboxRow
		if err := lock(tx.Where("stored_at_ms < ? AND lease_until_ms < ?", storedBeforeMs, now).Order("id").Limit(limit * eventScanFactor)).Find(&rows).Error; err != nil {
			return fmt.Errorf("claim event outbox rows: %w", err)
		}
		if len(rows) == 0 {
			return nil
		}
		convs := map[string]bool{}
		for _, r := range rows {
			convs[r.ConversationID] = true
		}
		var heldConvs []string
		if err := lock(tx.Model(&eventOutboxRow{}).Where("lease_until_ms >= ? AND conversation_id IN ?", now, keys(convs))).Pluck("conversation_id", &heldConvs).Error; err != nil {
			return fmt.Errorf("find held conversations: %w", err)
		}
		held := map[string]bool{}
		for _, c := range heldConvs {
			held[c] = true
		}
		var ids []int64
		for _, r := range rows {
			if len(claimed) == limit {
				break
			}
			if !held[r.ConversationID] {
				claimed = append(claimed, r)
				ids = append(ids, r.ID)
			}
		}
		if len(ids) == 0 {
			return nil
		}
		if err := tx.Table(s.byPrimaryKey("event_outbox")).Where("id IN ?", ids).Update("lease_until_ms", now+lease.Milliseconds()).Error; err != nil {
			return fmt.Errorf("lease event outbox rows: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list event outbox: %w", err)
	}
	out := make([]*gochatv1.OutboxEvent, 0, len(claimed))
	for _, r := range claimed {
		var ev gochatv1.DispatchEvent
		if err := proto.Unmarshal(r.Event, &ev); err != nil {
			return nil, fmt.Errorf("decode outbox event %d: %w", r.ID, err)
		}
		out = append(out, &gochatv1.OutboxEvent{Id: strconv.FormatInt(r.ID, 10), Event: &ev})
	}
	return out, nil
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
