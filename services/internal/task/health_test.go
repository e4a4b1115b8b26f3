package task

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

func TestKafkaHealth(t *testing.T) {
	var h kafkaHealth
	if err := h.check(time.Now()); err == nil || !strings.Contains(err.Error(), "no answer from Kafka yet") {
		t.Fatalf("before any answer: %v", err)
	}
	// A failed read is no sign of life.
	h.OnBrokerRead(kgo.BrokerMetadata{}, 1, 0, 0, 0, errors.New("connection refused"))
	if err := h.check(time.Now()); err == nil {
		t.Fatal("healthy after a failed read only")
	}
	h.OnBrokerRead(kgo.BrokerMetadata{}, 12, 10, 0, 0, nil)
	tests := []struct {
		name  string
		after time.Duration
		ok    bool
	}{
		{"just answered", 0, true},
		{"inside the window", kafkaStaleAfter - time.Second, true},
		{"silent too long", kafkaStaleAfter + time.Second, false},
	}
	for _, tt := range tests {
		err := h.check(time.Now().Add(tt.after))
		if (err == nil) != tt.ok {
			t.Errorf("%s: %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}
