// Package task is im-task: it consumes the dispatch topics and pushes each
// message and event to the gateways that hold its recipients' sessions.
package task

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/api/pki"
	"github.com/gochat/gochat/services/internal/apierror"
	"github.com/gochat/gochat/services/internal/clientapi"
	"github.com/gochat/gochat/services/internal/dispatch"
	"github.com/gochat/gochat/services/internal/rpc"
)

var (
	pushSeconds = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name: "gochat_task_push_seconds", Help: "Time of one batched push call to a gateway, by result.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	}, []string{"result"})
	deliveryLag = promauto.NewHistogram(prometheus.HistogramOpts{
		Name: "gochat_task_delivery_lag_seconds", Help: "From a message being stored to its push being handed to the gateways.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	})
	consumerLag = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "gochat_task_consumer_lag", Help: "Records behind the partition's high watermark after the last poll.",
	}, []string{"topic", "partition"})
	recordsDone = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "gochat_task_records_total", Help: "Dispatch records processed, by kind.",
	}, []string{"kind"})
)

// Config is im-task's own settings.
type Config struct {
	Kafka         dispatch.KafkaConfig
	ConsumerGroup string
	MaxPoll       int
	PushTimeout   time.Duration
	WebhookURL    string
	WebhookSecret string
	// TLS is im-task's identity for dialling gateways (nil: plaintext).
	TLS *rpc.Identity
}

// Task is one im-task process.
type Task struct {
	cfg      Config
	log      *slog.Logger
	repo     gochatv1.RepoServiceClient
	gateways *gatewayConns
	notifier *notifier
	order    *pushOrder
}

// New returns a task over an im-repo client.
func New(cfg Config, repo gochatv1.RepoServiceClient, log *slog.Logger) *Task {
	t := &Task{cfg: cfg, log: log, repo: repo, gateways: &gatewayConns{conns: map[string]*grpc.ClientConn{}, id: cfg.TLS}, order: newPushOrder(100_000)}
	if cfg.WebhookURL != "" {
		t.notifier = newNotifier(cfg.WebhookURL, cfg.WebhookSecret, log)
	}
	return t
}

// Run consumes until ctx ends. Offsets are committed only after a batch's
// pushes are handed to the gateways: a crash replays, it never skips.
func (t *Task) Run(ctx context.Context) error {
	opts, err := t.cfg.Kafka.ClientOptions()
	if err != nil {
		return err
	}
	topics := dispatch.TopicsFor(t.cfg.Kafka.TopicPrefix)
	if t.cfg.Kafka.EnsureTopics {
		admin, err := kgo.NewClient(opts...)
		if err != nil {
			return fmt.Errorf("kafka admin client: %w", err)
		}
		err = dispatch.EnsureTopics(ctx, admin, t.cfg.Kafka)
		admin.Close()
		if err != nil {
			return err
		}
	}
	opts = append(opts,
		kgo.ConsumerGroup(t.cfg.ConsumerGroup),
		kgo.ConsumeTopics(topics.Messages, topics.Events),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.OnPartitionsRevoked(func(context.Context, *kgo.Client, map[string][]int32) { t.order.reset() }),
		kgo.OnPartitionsLost(func(context.Context, *kgo.Client, map[string][]int32) { t.order.reset() }),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return fmt.Errorf("kafka consumer: %w", err)
	}
	defer t.gateways.closeAll()
	defer cl.Close()

	var wg sync.WaitGroup
	defer wg.Wait()
	if t.notifier != nil {
		wg.Add(1)
		go func() { defer wg.Done(); t.notifier.run(ctx) }()
	}
	t.log.Info("im-task consuming", "topics", []string{topics.Messages, topics.Events}, "group", t.cfg.ConsumerGroup)
	for {
		fetches := cl.PollRecords(ctx, t.cfg.MaxPoll)
		if ctx.Err() != nil {
			cl.AllowRebalance()
			return nil
		}
		fetches.EachError(func(topic string, p int32, err error) {
			t.log.Error("kafka fetch", "topic", topic, "partition", p, "err", err)
		})
		records := fetches.Records()
		if len(records) > 0 {
			if err := t.processWithRetry(ctx, records); err != nil {
				cl.AllowRebalance()
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			if err := cl.CommitRecords(ctx, records...); err != nil && ctx.Err() == nil {
				t.log.Error("commit offsets (the batch will be pushed again)", "err", err)
			}
		}
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			if n := len(p.Records); n > 0 {
				lag := p.HighWatermark - p.Records[n-1].Offset - 1
				consumerLag.WithLabelValues(p.Topic, strconv.Itoa(int(p.Partition))).Set(float64(lag))
			}
		})
		cl.AllowRebalance()
	}
}

// processWithRetry retries a batch while the backends are unavailable; only
// a stop ends it early, and then the batch is not committed.
func (t *Task) processWithRetry(ctx context.Context, records []*kgo.Record) error {
	backoff := 100 * time.Millisecond
	for {
		err := t.process(ctx, records)
		if err == nil {
			return nil
		}
		t.log.Error("dispatch batch failed, retrying", "records", len(records), "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// item is one thing to push: a frame, who should get it, and who already has it.
type item struct {
	convID     string
	frame      []byte
	extra      []string
	skipSess   string
	msg        *gochatv1.Message
	createdAt  time.Time
	notifyFrom string // for messages: the sender, who needs no notification
}

func (t *Task) process(ctx context.Context, records []*kgo.Record) error {
	items, orderUpdates, err := t.decode(ctx, records)
	if err != nil {
		return err
	}
	if len(items) == 0 {
		return nil
	}
	convSet := map[string]bool{}
	var convIDs []string
	for _, it := range items {
		if !convSet[it.convID] {
			convSet[it.convID] = true
			convIDs = append(convIDs, it.convID)
		}
	}
	mr, err := t.repo.GetMembers(ctx, &gochatv1.GetMembersRequest{ConversationIds: convIDs})
	if err != nil {
		return fmt.Errorf("get members: %w", err)
	}
	members := make(map[string][]string, len(mr.Lists))
	userSet := map[string]bool{}
	var users []string
	addUser := func(u string) {
		if !userSet[u] {
			userSet[u] = true
			users = append(users, u)
		}
	}
	for _, l := range mr.Lists {
		for _, m := range l.Members {
			members[l.ConversationId] = append(members[l.ConversationId], m.UserId)
			addUser(m.UserId)
		}
	}
	for _, it := range items {
		for _, u := range it.extra {
			addUser(u)
		}
	}
	pr, err := t.repo.GetPresence(ctx, &gochatv1.GetPresenceRequest{UserIds: users})
	if err != nil {
		return fmt.Errorf("get presence: %w", err)
	}
	sessions := map[string][]*gochatv1.Session{}
	for _, s := range pr.Sessions {
		sessions[s.UserId] = append(sessions[s.UserId], s)
	}

	// One push per gateway, holding every delivery for it in record order.
	perGateway := map[string][]*gochatv1.Delivery{}
	var offline []Notification
	for _, it := range items {
		targets := map[string][]string{}
		recipients := append(append([]string(nil), members[it.convID]...), it.extra...)
		seen := map[string]bool{}
		for _, u := range recipients {
			if seen[u] {
				continue
			}
			seen[u] = true
			ss := sessions[u]
			if len(ss) == 0 && it.msg != nil && u != it.notifyFrom {
				offline = append(offline, Notification{UserID: u, ConversationID: it.convID, Message: clientapi.MessageFrom(it.msg)})
			}
			for _, s := range ss {
				if s.SessionId != it.skipSess {
					targets[s.Gateway] = append(targets[s.Gateway], s.SessionId)
				}
			}
		}
		for gw, sids := range targets {
			perGateway[gw] = append(perGateway[gw], &gochatv1.Delivery{SessionIds: sids, Frame: it.frame})
		}
	}
	unknown, err := t.pushAll(ctx, perGateway)
	if err != nil {
		return err
	}
	if len(unknown) > 0 {
		t.dropStale(ctx, unknown, pr.Sessions)
	}
	now := time.Now()
	for _, it := range items {
		if it.msg != nil {
			deliveryLag.Observe(now.Sub(it.createdAt).Seconds())
		}
	}
	t.order.apply(orderUpdates)
	if len(offline) > 0 && t.notifier != nil {
		t.queueNotifications(ctx, offline)
	}
	return nil
}

// dropStale removes from presence the sessions a gateway says it does not
// hold (closed without their removal reaching presence).
func (t *Task) dropStale(ctx context.Context, unknown, known []*gochatv1.Session) {
	owner := make(map[string]string, len(known))
	for _, s := range known {
		owner[s.Gateway+"/"+s.SessionId] = s.UserId
	}
	for _, s := range unknown {
		s.UserId = owner[s.Gateway+"/"+s.SessionId]
	}
	if _, err := t.repo.UnregisterSessions(ctx, &gochatv1.UnregisterSessionsRequest{Sessions: unknown}); err != nil {
		t.log.Warn("remove stale sessions from presence", "count", len(unknown), "err", err)
	}
}

func (t *Task) queueNotifications(ctx context.Context, offline []Notification) {
	var ids []string
	seen := map[string]bool{}
	for _, n := range offline {
		if !seen[n.UserID] {
			seen[n.UserID] = true
			ids = append(ids, n.UserID)
		}
	}
	counts := map[string]int64{}
	if r, err := t.repo.UnreadCounts(ctx, &gochatv1.UnreadCountsRequest{UserIds: ids}); err != nil {
		t.log.Warn("unread counts for notifications", "err", err)
	} else {
		for _, c := range r.Counts {
			counts[c.UserId] = c.Unread
		}
	}
	for i := range offline {
		offline[i].Unread = counts[offline[i].UserID]
	}
	t.notifier.enqueue(offline)
}

// decode turns records into push items, in order. Messages of one
// conversation are pushed in seq order even if two im-logic replicas
// published them out of order: a gap is filled from im-repo first, and a seq
// already pushed is skipped.
func (t *Task) decode(ctx context.Context, records []*kgo.Record) ([]item, map[string]int64, error) {
	var items []item
	pending := map[string]int64{} // conversation -> highest seq pushed by this batch
	last := func(conv string) (int64, bool) {
		if s, ok := pending[conv]; ok {
			return s, true
		}
		return t.order.get(conv)
	}
	for _, ev := range t.decodeSorted(records) {
		switch e := ev.Event.(type) {
		case *gochatv1.DispatchEvent_Message:
			m := e.Message
			prev, known := last(m.ConversationId)
			if known && m.Seq <= prev {
				recordsDone.WithLabelValues("message_duplicate").Inc()
				continue
			}
			if known && m.Seq > prev+1 {
				missing, err := t.fetchRange(ctx, m.ConversationId, prev, m.Seq)
				if err != nil {
					return nil, nil, err
				}
				for _, mm := range missing {
					items = append(items, messageItem(mm, ""))
				}
			}
			items = append(items, messageItem(m, ev.OriginSessionId))
			pending[m.ConversationId] = m.Seq
			recordsDone.WithLabelValues("message").Inc()
		case *gochatv1.DispatchEvent_Read:
			rd := e.Read
			seq := rd.Seq
			items = append(items, item{convID: rd.ConversationId, skipSess: ev.OriginSessionId,
				frame: clientapi.Frame(clientapi.TypeRead, clientapi.ReadData{ConversationID: rd.ConversationId, UserID: rd.UserId, Seq: &seq})})
			recordsDone.WithLabelValues("read").Inc()
		case *gochatv1.DispatchEvent_Group:
			gr := e.Group
			items = append(items, item{convID: gr.ConversationId, extra: ev.ExtraRecipients,
				frame: clientapi.Frame(clientapi.TypeEvent, clientapi.Event{
					Kind: clientapi.EventKinds[gr.Kind], ConversationID: gr.ConversationId, UserIDs: gr.UserIds, ActorID: gr.ActorId,
				})})
			recordsDone.WithLabelValues("group").Inc()
		default:
			recordsDone.WithLabelValues("invalid").Inc()
		}
	}
	return items, pending, nil
}

// decodeSorted decodes a batch and puts each conversation's messages in seq
// order within the slots they arrived in. Two im-logic replicas (or two
// goroutines of one) may publish seq 6 before seq 5; when both are in one
// batch this restores the order without asking im-repo, and keeps each
// message's origin session.
func (t *Task) decodeSorted(records []*kgo.Record) []*gochatv1.DispatchEvent {
	evs := make([]*gochatv1.DispatchEvent, 0, len(records))
	slots := map[string][]int{}
	for _, r := range records {
		ev, err := dispatch.Decode(r.Value)
		if err != nil {
			t.log.Error("skipping undecodable dispatch record", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "err", err)
			recordsDone.WithLabelValues("invalid").Inc()
			continue
		}
		if m := ev.GetMessage(); m != nil {
			slots[m.ConversationId] = append(slots[m.ConversationId], len(evs))
		}
		evs = append(evs, ev)
	}
	for _, idx := range slots {
		if len(idx) < 2 {
			continue
		}
		group := make([]*gochatv1.DispatchEvent, len(idx))
		for i, j := range idx {
			group[i] = evs[j]
		}
		sort.SliceStable(group, func(a, b int) bool { return group[a].GetMessage().Seq < group[b].GetMessage().Seq })
		for i, j := range idx {
			evs[j] = group[i]
		}
	}
	return evs
}

func messageItem(m *gochatv1.Message, origin string) item {
	return item{
		convID: m.ConversationId, msg: m, skipSess: origin, notifyFrom: m.SenderId,
		createdAt: time.UnixMilli(m.CreatedAtMs),
		frame:     clientapi.Frame(clientapi.TypeMessage, clientapi.MessageFrom(m)),
	}
}

// fetchRange loads the messages with after < seq < before.
func (t *Task) fetchRange(ctx context.Context, conv string, after, before int64) ([]*gochatv1.Message, error) {
	var out []*gochatv1.Message
	for after < before-1 {
		r, err := t.repo.ListMessages(ctx, &gochatv1.ListMessagesRequest{ConversationId: conv, AfterSeq: after, Limit: 200})
		if err != nil {
			return nil, fmt.Errorf("fill seq gap in %s: %w", conv, err)
		}
		if len(r.Messages) == 0 {
			break
		}
		for _, m := range r.Messages {
			if m.Seq >= before {
				return out, nil
			}
			out = append(out, m)
			after = m.Seq
		}
	}
	return out, nil
}

// pushAll pushes to every gateway at once and waits for all of them. A
// gateway that cannot be reached after retries is given up on for this
// batch: its clients see the seq gap and sync, and presence drops it with its TTL.
func (t *Task) pushAll(ctx context.Context, perGateway map[string][]*gochatv1.Delivery) ([]*gochatv1.Session, error) {
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		unknown []*gochatv1.Session
	)
	for gw, deliveries := range perGateway {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids, err := t.pushOne(ctx, gw, deliveries)
			if err != nil {
				t.log.Error("push to gateway failed, its clients will sync", "gateway", gw, "deliveries", len(deliveries), "err", err)
				return
			}
			mu.Lock()
			for _, id := range ids {
				unknown = append(unknown, &gochatv1.Session{SessionId: id, Gateway: gw})
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return unknown, nil
}

const maxDeliveriesPerPush = 5000

func (t *Task) pushOne(ctx context.Context, gw string, deliveries []*gochatv1.Delivery) ([]string, error) {
	client, err := t.gateways.get(gw)
	if err != nil {
		return nil, err
	}
	var unknown []string
	for start := 0; start < len(deliveries); start += maxDeliveriesPerPush {
		chunk := deliveries[start:min(start+maxDeliveriesPerPush, len(deliveries))]
		var resp *gochatv1.PushResponse
		for attempt := 0; ; attempt++ {
			callCtx, cancel := context.WithTimeout(ctx, t.cfg.PushTimeout)
			begin := time.Now()
			// Fail fast on a gateway that is gone (a pod replaced, its
			// presence not yet expired): waiting for it would stall the batch.
			resp, err = client.Push(callCtx, &gochatv1.PushRequest{Deliveries: chunk}, grpc.WaitForReady(false))
			cancel()
			if err == nil {
				pushSeconds.WithLabelValues("ok").Observe(time.Since(begin).Seconds())
				break
			}
			pushSeconds.WithLabelValues("error").Observe(time.Since(begin).Seconds())
			if attempt == 2 || ctx.Err() != nil || apierror.From(err).Code != apierror.Unavailable {
				if apierror.From(err).Code == apierror.Unavailable {
					t.gateways.drop(gw) // redialed if it comes back
				}
				return unknown, err
			}
			time.Sleep(time.Duration(attempt+1) * 100 * time.Millisecond)
		}
		unknown = append(unknown, resp.UnknownSessionIds...)
	}
	return unknown, nil
}

// gatewayConns keeps one long-lived connection per gateway address.
type gatewayConns struct {
	id    *rpc.Identity
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func (g *gatewayConns) get(addr string) (gochatv1.PushServiceClient, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c, ok := g.conns[addr]; ok {
		return gochatv1.NewPushServiceClient(c), nil
	}
	c, err := rpc.Dial(addr, g.id, pki.Gateway)
	if err != nil {
		return nil, err
	}
	g.conns[addr] = c
	return gochatv1.NewPushServiceClient(c), nil
}

func (g *gatewayConns) drop(addr string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c, ok := g.conns[addr]; ok {
		_ = c.Close()
		delete(g.conns, addr)
	}
}

func (g *gatewayConns) closeAll() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for addr, c := range g.conns {
		_ = c.Close()
		delete(g.conns, addr)
	}
}
