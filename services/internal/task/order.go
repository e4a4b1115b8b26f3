package task

import (
	"container/list"
	"sync"
)

// pushOrder remembers, per conversation, the highest seq pushed, so that
// messages go out in seq order and a replayed record is not pushed twice. It
// holds at most max conversations (least recently used go first); a
// conversation it forgot simply starts again from its next message.
type pushOrder struct {
	mu    sync.Mutex
	max   int
	lru   *list.List
	items map[string]*list.Element
}

type orderEntry struct {
	conv string
	seq  int64
}

func newPushOrder(max int) *pushOrder {
	return &pushOrder{max: max, lru: list.New(), items: map[string]*list.Element{}}
}

func (o *pushOrder) get(conv string) (int64, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if e, ok := o.items[conv]; ok {
		return e.Value.(*orderEntry).seq, true
	}
	return 0, false
}

// apply records the seqs a batch pushed.
func (o *pushOrder) apply(updates map[string]int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for conv, seq := range updates {
		if e, ok := o.items[conv]; ok {
			if ent := e.Value.(*orderEntry); seq > ent.seq {
				ent.seq = seq
			}
			o.lru.MoveToFront(e)
			continue
		}
		o.items[conv] = o.lru.PushFront(&orderEntry{conv: conv, seq: seq})
		if o.lru.Len() > o.max {
			old := o.lru.Back()
			o.lru.Remove(old)
			delete(o.items, old.Value.(*orderEntry).conv)
		}
	}
}

// reset forgets everything: after a rebalance another task may have pushed
// further in the partitions this one gets back.
func (o *pushOrder) reset() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.lru.Init()
	o.items = map[string]*list.Element{}
}
