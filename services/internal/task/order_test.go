package task

import "testing"

func TestPushOrder(t *testing.T) {
	o := newPushOrder(2)
	if _, ok := o.get("a"); ok {
		t.Fatal("empty order knows a")
	}
	o.apply(map[string]int64{"a": 3})
	o.apply(map[string]int64{"a": 2}) // never backwards
	if s, _ := o.get("a"); s != 3 {
		t.Fatalf("a = %d, want 3", s)
	}
	o.apply(map[string]int64{"b": 1})
	o.apply(map[string]int64{"c": 1}) // evicts a, the least recently used
	if _, ok := o.get("a"); ok {
		t.Fatal("a should have been evicted")
	}
	if _, ok := o.get("c"); !ok {
		t.Fatal("c missing")
	}
	o.reset()
	if _, ok := o.get("b"); ok {
		t.Fatal("reset kept b")
	}
}
