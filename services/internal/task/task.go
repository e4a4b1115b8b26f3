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
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
	// Split from deliveryLag so that a slow hop shows: the store's commit,
	// im-logic's publish and the broker's fetch are before it, the routing
	// and the push after it.
	fetchLag = promauto.NewHistogram(prometheus.HistogramOpts{
		Name: "gochat_task_fetch_lag_seconds", Help: "From a message being stored to im-task holding its record (the store's commit, the publish, Kafka).",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	})
	consumerLag = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "gochat_task_consumer_lag", Help: "Records behind the partition's high watermark after the last poll.",
	}, []string{"topic", "partition"})
	recordsDone = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "gochat_task_records_total", Help: "Dispatch records processed, by kind.",
	}, []string{"kind"})
	deadLetters = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "gochat_task_dead_letters_total", Help: "Dispatch records given up on after retries (logged with topic, partition and offset), by topic.",
	}, []string{"topic"})
	commitSeconds = promauto.NewHistogram(prometheus.HistogramOpts{
		Name: "gochat_task_commit_seconds", Help: "Time of committing a batch's offsets (the next batch waits for it).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	})
	resyncs = promauto.NewCounter(prometheus.CounterOpts{
		Name: "gochat_task_resyncs_total", Help: "Sessions sent a resync frame: a push to them failed, or they came online in a large conversation that im-task's route cache held without them.",
	})
)

// Bounds on every backend request im-task makes, by count and by bytes: one
// busy poll must never build a request a server refuses, or the same batch
// would fail again after every restart.
const (
	maxConvsPerGetMembers = 50   // x 1000 members at most: well under the 16 MiB message limit
	maxUsersPerLookup     = 1000 // GetPresence and UnreadCounts take at most 5000
	maxDeliveriesPerPush  = 5000 // a gateway takes at most 10000
	maxPushBytes          = 4 << 20
	// poisonAttempts is how often a batch that fails with something other
	// than unavailable is tried before its records are tried one by one and
	// the ones that still fail are dead-lettered.
	poisonAttempts = 3
)

// Config is im-task's own settings.
type Config struct {
	Kafka         dispatch.KafkaConfig
	ConsumerGroup string
	MaxPoll       int
	PushTimeout   time.Duration
	WebhookURL    string
	WebhookSecret string
	// RouteCacheTTL is how long the sessions of a large conversation's
	// members are routed from memory before presence is read again, while
	// im-repo's presence change log cannot be read (0: presence is read for
	// every push, and the cache is off).
	RouteCacheTTL time.Duration
	// RouteCacheMaxAge is that while the change log is read: an entry whose
	// user did not change is read again when it is this old.
	RouteCacheMaxAge time.Duration
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
	routes   *routeCache  // nil: off
	lists    *memberLists // with routes
	kafka    kafkaHealth
	// changeLog is how the last read of the presence change log went
	// (changeLogWorks, changeLogFails): a failure is logged once, not at
	// every poll.
	changeLog atomic.Int32
}

// New returns a task over an im-repo client.
func New(cfg Config, repo gochatv1.RepoServiceClient, log *slog.Logger) *Task {
	t := &Task{cfg: cfg, log: log, repo: repo, order: newPushOrder(100_000),
		gateways: &gatewayConns{conns: map[string]*grpc.ClientConn{}, id: cfg.TLS, downTill: map[string]time.Time{}, cooldown: map[string]time.Duration{}}}
	if cfg.RouteCacheTTL > 0 {
		t.routes = newRouteCache(cfg.RouteCacheTTL, cfg.RouteCacheMaxAge)
		t.lists = newMemberLists()
	}
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
		kgo.WithHooks(&t.kafka),
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
	if t.routes != nil {
		wg.Add(1)
		go func() { defer wg.Done(); t.refreshRoutes(ctx) }()
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
			begin := time.Now()
			err := cl.CommitRecords(ctx, records...)
			commitSeconds.Observe(time.Since(begin).Seconds())
			if err != nil && ctx.Err() == nil {
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

// processWithRetry retries a batch while the backends are unavailable (that
// is an outage, not a bad record: dropping would lose pushes). Any other
// error is retried a few times with backoff; then each record is tried on
// its own, and one that still fails is dead-lettered (an error log naming
// its offset, and a metric) so that it cannot stop its partition. Only a
// stop ends it early, and then the batch is not committed.
func (t *Task) processWithRetry(ctx context.Context, records []*kgo.Record) error {
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := t.process(ctx, records)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !retryForever(err) && attempt >= poisonAttempts {
			t.log.Error("dispatch batch keeps failing, trying its records one by one", "records", len(records), "err", err)
			return t.processEach(ctx, records)
		}
		t.log.Error("dispatch batch failed, retrying", "records", len(records), "attempt", attempt, "err", err)
		if err := sleep(ctx, backoff); err != nil {
			return err
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// processEach processes records one at a time, dead-lettering the ones that
// fail on their own.
func (t *Task) processEach(ctx context.Context, records []*kgo.Record) error {
	for _, r := range records {
		backoff := 100 * time.Millisecond
		for attempt := 1; ; attempt++ {
			err := t.process(ctx, []*kgo.Record{r})
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !retryForever(err) && attempt >= poisonAttempts {
				deadLetters.WithLabelValues(r.Topic).Inc()
				t.log.Error("dead-lettering a dispatch record: it fails on its own (its recipients sync it from the store)",
					"topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "err", err)
				break
			}
			if err := sleep(ctx, backoff); err != nil {
				return err
			}
			backoff = min(backoff*2, 5*time.Second)
		}
	}
	return nil
}

// retryForever reports an error that means a backend is down, not that the
// request is bad.
func retryForever(err error) bool {
	c := apierror.From(err).Code
	return c == apierror.Unavailable
}

func sleep(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
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
	var lists []*gochatv1.MemberList
	for start := 0; start < len(convIDs); start += maxConvsPerGetMembers {
		chunk := convIDs[start:min(start+maxConvsPerGetMembers, len(convIDs))]
		held := t.lists.known(chunk)
		req := &gochatv1.GetMembersRequest{ConversationIds: chunk}
		if len(held) > 0 {
			req.KnownVersions = make(map[string]int64, len(held))
			for id, l := range held {
				req.KnownVersions[id] = l.Version
			}
		}
		mr, err := t.repo.GetMembers(ctx, req)
		if err != nil {
			return fmt.Errorf("get members: %w", err)
		}
		got, err := t.lists.resolve(mr.Lists, held)
		if err != nil {
			return err
		}
		lists = append(lists, got...)
	}
	// Large conversations whose route is still good are pushed from it, and
	// their members are not looked at one by one (unless an item names
	// extra recipients, or a gateway of the route is down).
	fast := map[string]*convRoute{}
	for _, l := range lists {
		if len(l.Members) >= RouteCacheMinMembers {
			if r := t.routes.route(l.ConversationId, l.Version); r != nil && !t.anyDown(r) {
				fast[l.ConversationId] = r
			}
		}
	}
	for _, it := range items {
		if len(it.extra) > 0 {
			delete(fast, it.convID)
		}
	}
	version := map[string]int64{}
	members := make(map[string][]string, len(lists))
	userSet := map[string]bool{}
	var users []string
	addUser := func(u string) {
		if !userSet[u] {
			userSet[u] = true
			users = append(users, u)
		}
	}
	// exact: users whose presence is read for this batch, whatever the
	// cache holds (members of small conversations, extra recipients).
	exact := map[string]bool{}
	// A resync makes a client sync messages: only conversations that a
	// message is pushed to are remembered for one (a missed group event
	// is not recovered by a sync).
	hasMessage := map[string]bool{}
	for _, it := range items {
		if it.msg != nil {
			hasMessage[it.convID] = true
		}
	}
	cacheable := []string{}
	pushing := map[string][]string{} // user -> large conversations of this batch with a message
	for _, l := range lists {
		if fast[l.ConversationId] != nil {
			continue
		}
		version[l.ConversationId] = l.Version
		large := t.routes != nil && len(l.Members) >= RouteCacheMinMembers
		for _, m := range l.Members {
			members[l.ConversationId] = append(members[l.ConversationId], m.UserId)
			addUser(m.UserId)
			if large {
				if _, ok := pushing[m.UserId]; !ok {
					pushing[m.UserId] = nil
				}
				if hasMessage[l.ConversationId] {
					pushing[m.UserId] = append(pushing[m.UserId], l.ConversationId)
				}
			} else {
				exact[m.UserId] = true
			}
		}
	}
	for _, it := range items {
		for _, u := range it.extra {
			addUser(u)
			exact[u] = true
		}
	}
	for _, u := range users {
		if _, large := pushing[u]; large && !exact[u] {
			cacheable = append(cacheable, u)
		}
	}
	hit := t.routes.hits(cacheable, pushing)
	toRead := users
	if len(hit) > 0 {
		toRead = make([]string, 0, len(users)-len(hit))
		for _, u := range users {
			if _, ok := hit[u]; !ok {
				toRead = append(toRead, u)
			}
		}
	}
	read := time.Now()
	live, gen, err := t.lookup(ctx, toRead)
	if err != nil {
		return err
	}
	sessions := map[string][]*gochatv1.Session{}
	for _, s := range live {
		sessions[s.UserId] = append(sessions[s.UserId], s)
	}
	var resync map[string][]delivery
	if t.routes != nil && len(cacheable) > 0 {
		var readNow []string
		for _, u := range cacheable {
			if _, ok := hit[u]; !ok {
				readNow = append(readNow, u)
			}
		}
		resync = t.routes.store(read, gen, readNow, sessions, pushing)
		routeLookups.WithLabelValues("presence").Add(float64(len(readNow)))
		routeLookups.WithLabelValues("cache").Add(float64(len(hit)))
		// The next messages of these conversations go by their route.
		for conv := range hasMessage {
			if ms := members[conv]; len(ms) >= RouteCacheMinMembers {
				t.routes.keepRoute(conv, version[conv], ms)
			}
		}
	}
	for u, ss := range hit {
		if len(ss) > 0 {
			sessions[u] = ss
		}
	}
	var known []*gochatv1.Session
	for _, ss := range sessions {
		known = append(known, ss...)
	}

	// A gateway that failed its last push is skipped until its cooldown
	// ends: its users count as offline (their webhook fires), and the
	// healthy gateways are not held up waiting for it. (A new slice: the
	// cache's are shared.)
	for u, ss := range sessions {
		var kept []*gochatv1.Session
		for _, s := range ss {
			if !t.gateways.isDown(s.Gateway) {
				kept = append(kept, s)
			}
		}
		if len(kept) == 0 {
			delete(sessions, u)
		} else {
			sessions[u] = kept
		}
	}

	// One push per gateway, holding every delivery for it in record order.
	perGateway := map[string][]delivery{}
	var offline []Notification
	for _, it := range items {
		if r := fast[it.convID]; r != nil {
			routeLookups.WithLabelValues("route").Add(float64(r.members))
			perGateway = r.deliver(perGateway, it)
			if it.msg != nil {
				for _, u := range r.offline {
					if u != it.notifyFrom {
						offline = append(offline, Notification{UserID: u, ConversationID: it.convID, Message: clientapi.MessageFrom(it.msg)})
					}
				}
			}
			continue
		}
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
			perGateway[gw] = append(perGateway[gw], delivery{convID: it.convID, d: &gochatv1.Delivery{SessionIds: sids, Frame: it.frame}})
		}
	}
	for gw, ds := range resync {
		perGateway[gw] = append(perGateway[gw], ds...)
		for _, d := range ds {
			resyncs.Add(float64(len(d.d.SessionIds)))
		}
	}
	unknown, err := t.pushAll(ctx, perGateway)
	if err != nil {
		return err
	}
	if len(unknown) > 0 {
		gone := make(map[string]bool, len(unknown))
		for _, s := range unknown {
			gone[s.Gateway+"/"+s.SessionId] = true
		}
		t.routes.forget(gone)
		for _, r := range fast {
			known = append(known, r.sessions...)
		}
		t.dropStale(ctx, unknown, known)
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
	for start := 0; start < len(unknown); start += maxUsersPerLookup {
		batch := unknown[start:min(start+maxUsersPerLookup, len(unknown))]
		if _, err := t.repo.UnregisterSessions(ctx, &gochatv1.UnregisterSessionsRequest{Sessions: batch}); err != nil {
			t.log.Warn("remove stale sessions from presence", "count", len(batch), "err", err)
		}
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
	for start := 0; start < len(ids); start += maxUsersPerLookup {
		r, err := t.repo.UnreadCounts(ctx, &gochatv1.UnreadCountsRequest{UserIds: ids[start:min(start+maxUsersPerLookup, len(ids))]})
		if err != nil {
			t.log.Warn("unread counts for notifications", "err", err)
			continue
		}
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
			fetchLag.Observe(time.Since(time.UnixMilli(m.CreatedAtMs)).Seconds())
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

// delivery is one frame for some sessions of one gateway, and the
// conversation it belongs to (for a resync if it cannot be pushed).
type delivery struct {
	convID string
	d      *gochatv1.Delivery
}

// pushAll pushes to every gateway at once and waits for all of them. A push
// that fails is not silently dropped: its sessions are sent a resync frame
// for each conversation it held, so that they sync from their last seq. A
// gateway that cannot be reached is marked down for a cooldown: its clients
// reconnect elsewhere and sync, and presence drops it.
func (t *Task) pushAll(ctx context.Context, perGateway map[string][]delivery) ([]*gochatv1.Session, error) {
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		unknown []*gochatv1.Session
	)
	for gw, deliveries := range perGateway {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids, failed, err := t.pushOne(ctx, gw, deliveries)
			if err != nil && ctx.Err() == nil {
				t.log.Error("push to gateway failed", "gateway", gw, "deliveries", len(failed), "err", err)
				if len(failed) > 0 && !t.gateways.isDown(gw) {
					t.resync(ctx, gw, failed)
				}
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

// resync tells the sessions of failed deliveries to sync the conversations
// they missed, in one small push.
func (t *Task) resync(ctx context.Context, gw string, failed []delivery) {
	perConv := map[string]map[string]bool{}
	for _, f := range failed {
		if perConv[f.convID] == nil {
			perConv[f.convID] = map[string]bool{}
		}
		for _, id := range f.d.SessionIds {
			perConv[f.convID][id] = true
		}
	}
	var ds []delivery
	n := 0
	for conv, set := range perConv {
		ids := make([]string, 0, len(set))
		for id := range set {
			ids = append(ids, id)
		}
		n += len(ids)
		ds = append(ds, delivery{convID: conv, d: &gochatv1.Delivery{SessionIds: ids,
			Frame: clientapi.Frame(clientapi.TypeResync, clientapi.ResyncData{ConversationID: conv})}})
	}
	if _, _, err := t.pushOne(ctx, gw, ds); err != nil {
		t.log.Error("resync after a failed push also failed: those clients sync when they reconnect", "gateway", gw, "sessions", n, "err", err)
		return
	}
	resyncs.Add(float64(n))
}

// pushChunks splits deliveries into pushes bounded by count and by bytes. A
// delivery over the byte bound goes alone.
func pushChunks(ds []delivery) [][]delivery {
	var (
		out   [][]delivery
		start int
		bytes int
	)
	for i, d := range ds {
		size := len(d.d.Frame) + 16
		for _, id := range d.d.SessionIds {
			size += len(id) + 2
		}
		if i > start && (i-start >= maxDeliveriesPerPush || bytes+size > maxPushBytes) {
			out = append(out, ds[start:i])
			start, bytes = i, 0
		}
		bytes += size
	}
	if start < len(ds) {
		out = append(out, ds[start:])
	}
	return out
}

// pushOne pushes deliveries to one gateway in order, in bounded chunks. It
// returns the session ids the gateway does not hold and, on error, the
// deliveries not pushed.
func (t *Task) pushOne(ctx context.Context, gw string, deliveries []delivery) (unknown []string, failed []delivery, err error) {
	client, err := t.gateways.get(gw)
	if err != nil {
		return nil, deliveries, err
	}
	chunks := pushChunks(deliveries)
	for ci, chunk := range chunks {
		req := &gochatv1.PushRequest{Deliveries: make([]*gochatv1.Delivery, len(chunk))}
		for i, d := range chunk {
			req.Deliveries[i] = d.d
		}
		var resp *gochatv1.PushResponse
		for attempt := 0; ; attempt++ {
			callCtx, cancel := context.WithTimeout(ctx, t.cfg.PushTimeout)
			begin := time.Now()
			// Fail fast on a gateway that is gone (a pod replaced, its
			// presence not yet expired): waiting for it would stall the batch.
			resp, err = client.Push(callCtx, req, grpc.WaitForReady(false))
			cancel()
			if err == nil {
				pushSeconds.WithLabelValues("ok").Observe(time.Since(begin).Seconds())
				t.gateways.up(gw)
				break
			}
			pushSeconds.WithLabelValues("error").Observe(time.Since(begin).Seconds())
			code := apierror.From(err).Code
			// Unavailable is a refused connection: quick to learn, worth a
			// retry. A timeout is a gateway that does not answer: another
			// try would stall every batch again, so it is marked down now.
			timedOut := status.Code(err) == codes.DeadlineExceeded
			if attempt == 2 || ctx.Err() != nil || code != apierror.Unavailable || timedOut {
				if code == apierror.Unavailable {
					t.gateways.down(gw) // redialed after its cooldown
				}
				var rest []delivery
				for _, c := range chunks[ci:] {
					rest = append(rest, c...)
				}
				return unknown, rest, err
			}
			if err := sleep(ctx, time.Duration(attempt+1)*100*time.Millisecond); err != nil {
				return unknown, nil, err
			}
		}
		unknown = append(unknown, resp.UnknownSessionIds...)
	}
	return unknown, nil, nil
}

// gatewayConns keeps one long-lived connection per gateway address, and a
// breaker per gateway: one that failed is skipped until its cooldown ends,
// the cooldown doubling (up to 15s) while it keeps failing.
type gatewayConns struct {
	id       *rpc.Identity
	mu       sync.Mutex
	conns    map[string]*grpc.ClientConn
	downTill map[string]time.Time
	cooldown map[string]time.Duration
}

const (
	firstCooldown = 2 * time.Second
	maxCooldown   = 15 * time.Second // a gateway back from a stall waits at most this for pushes
)

func (g *gatewayConns) isDown(addr string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return time.Now().Before(g.downTill[addr])
}

// down marks a gateway failed and drops its connection.
func (g *gatewayConns) down(addr string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	d := min(max(g.cooldown[addr]*2, firstCooldown), maxCooldown)
	g.cooldown[addr] = d
	g.downTill[addr] = time.Now().Add(d)
	if c, ok := g.conns[addr]; ok {
		_ = c.Close()
		delete(g.conns, addr)
	}
}

// up forgets a gateway's failures after a push succeeded.
func (g *gatewayConns) up(addr string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.cooldown[addr]; ok {
		delete(g.cooldown, addr)
		delete(g.downTill, addr)
	}
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

func (g *gatewayConns) closeAll() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for addr, c := range g.conns {
		_ = c.Close()
		delete(g.conns, addr)
	}
}
