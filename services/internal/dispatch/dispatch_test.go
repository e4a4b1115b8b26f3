package dispatch

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
)

// Events go to their topic keyed by conversation, over the Kafka protocol.
func TestPublish(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	cfg := KafkaConfig{Brokers: cluster.ListenAddrs(), TopicPrefix: "t", EnsureTopics: true, Partitions: 3, ReplicationFactor: 1, Retention: time.Hour, DeliveryTimeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pub, err := NewPublisher(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	delivered := make(chan struct{}, 1)
	pub.Publish(&gochatv1.DispatchEvent{Event: &gochatv1.DispatchEvent_Message{Message: &gochatv1.Message{ConversationId: "c1", Seq: 7}}, OriginSessionId: "s"}, func(err error) {
		if err == nil {
			delivered <- struct{}{}
		}
	})
	pub.Publish(&gochatv1.DispatchEvent{Event: &gochatv1.DispatchEvent_Read{Read: &gochatv1.ReadEvent{ConversationId: "c2", Seq: 3}}}, nil)
	pub.Publish(&gochatv1.DispatchEvent{Event: &gochatv1.DispatchEvent_Group{Group: &gochatv1.GroupEvent{ConversationId: "c3"}}}, nil)
	pub.Close(ctx)
	select {
	case <-delivered:
	default:
		t.Fatal("the delivery callback did not run")
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...), kgo.ConsumeTopics("t.messages", "t.events"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	got := map[string]string{} // key -> topic
	for len(got) < 3 && ctx.Err() == nil {
		fs := cl.PollFetches(ctx)
		fs.EachRecord(func(r *kgo.Record) {
			ev, err := Decode(r.Value)
			if err != nil {
				t.Fatal(err)
			}
			if m := ev.GetMessage(); m != nil && (m.Seq != 7 || ev.OriginSessionId != "s") {
				t.Fatalf("message %+v", ev)
			}
			got[string(r.Key)] = r.Topic
		})
	}
	want := map[string]string{"c1": "t.messages", "c2": "t.events", "c3": "t.events"}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("records %v, want %v", got, want)
		}
	}
	if _, err := Decode([]byte{0xff, 0xff}); err == nil {
		t.Fatal("garbage decoded")
	}
}

// SendNow sends what lingers: with a linger of a minute, a published record
// still reaches a consumer at once.
func TestSendNow(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	cfg := KafkaConfig{Brokers: cluster.ListenAddrs(), TopicPrefix: "n", EnsureTopics: true, Partitions: 1, ReplicationFactor: 1,
		Retention: time.Hour, DeliveryTimeout: 2 * time.Minute, Linger: time.Minute}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pub, err := NewPublisher(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(ctx)
	// The first record waits for the topic's metadata, as it would in a
	// running im-logic only once: flushed whole here.
	pub.Publish(&gochatv1.DispatchEvent{Event: &gochatv1.DispatchEvent_Message{Message: &gochatv1.Message{ConversationId: "c1", Seq: 1}}}, nil)
	if err := pub.cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	acked := make(chan error, 1)
	pub.Publish(&gochatv1.DispatchEvent{Event: &gochatv1.DispatchEvent_Message{Message: &gochatv1.Message{ConversationId: "c1", Seq: 2}}}, func(err error) { acked <- err })
	pub.SendNow()
	select {
	case err := <-acked:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the record was not sent: it waits out the minute's linger")
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...), kgo.ConsumeTopics("n.messages"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for n := 0; n < 2 && ctx.Err() == nil; {
		fs := cl.PollFetches(ctx)
		n += fs.NumRecords()
	}
	if ctx.Err() != nil {
		t.Fatal("no record consumed")
	}
}
