package repo_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/api/pki"
	"github.com/gochat/gochat/services/internal/apierror"
	"github.com/gochat/gochat/services/internal/ids"
	"github.com/gochat/gochat/services/internal/repo"
	"github.com/gochat/gochat/services/internal/rpc"
	tc "github.com/gochat/gochat/services/testcluster"
)

type env struct {
	client gochatv1.RepoServiceClient
	flush  func() // Redis loses every key of this test
	rdb    *redis.Client
	prefix string
}

// start serves im-repo over gRPC on loopback, on a fresh database of the
// given dialect and a Redis key prefix of the test's own.
func start(t *testing.T, dialect string) *env {
	t.Helper()
	return startWith(t, dbConfig(t, dialect), repo.Config{MemberCacheTTL: time.Minute, StoreWorkers: 4, StoreMaxBatch: 64, OutboxLease: time.Second})
}

// dbConfig is a fresh database of the dialect: a MariaDB database of the
// test's own, or a SQLite file in its temporary directory.
func dbConfig(t *testing.T, dialect string) repo.DBConfig {
	t.Helper()
	var cfg repo.DBConfig
	switch dialect {
	case "mysql":
		cfg.MySQLDSN = tc.FreshDatabase(t)
	case "sqlite":
		cfg.SQLitePath = filepath.Join(t.TempDir(), "gochat.db")
	default:
		t.Fatalf("unknown dialect %q", dialect)
	}
	return cfg
}

// checkGapless checks that each conversation's messages have the seqs 1..n
// with no gap, and returns how many they are in all.
func checkGapless(t *testing.T, e *env, convs []*gochatv1.Conversation, viewer string) int {
	t.Helper()
	total := 0
	for _, c := range convs {
		seqs := allSeqs(t, e, c.Id, viewer)
		for i, s := range seqs {
			if s != int64(i+1) {
				t.Fatalf("conversation %s: seq %d at position %d", c.Id, s, i)
			}
		}
		total += len(seqs)
	}
	return total
}

func startWith(t testing.TB, cfg repo.DBConfig, rcfg repo.Config) *env {
	t.Helper()
	// Warnings and errors go to the test's output, shown when it fails: an
	// Internal answer's cause (a deadlock, say) is only in the log.
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	db, err := repo.OpenDB(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := repo.CheckSchema(ctx, db); err == nil {
		t.Fatal("CheckSchema passed on an empty database")
	}
	for i := 0; i < 2; i++ { // a second run finds nothing to do
		if err := repo.Migrate(ctx, db, log); err != nil {
			t.Fatalf("migrate (run %d): %v", i+1, err)
		}
	}
	if err := repo.CheckSchema(ctx, db); err != nil {
		t.Fatal(err)
	}
	rdb, prefix := tc.Redis(t)
	rcfg.RedisPrefix = prefix
	srv, err := repo.NewServer(db, rdb, rcfg, log)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { srv.Run(runCtx); close(done) }()
	gs := rpc.NewServer(log, nil) // plaintext: these tests are about storage; internal/rpc tests the authorization
	gochatv1.RegisterRepoServiceServer(gs, srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(ln) }()
	conn, err := rpc.Dial(ln.Addr().String(), nil, pki.Repo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		gs.Stop()
		stop()
		<-done
		if sqlDB, err := db.DB(); err == nil {
			sqlDB.Close()
		}
	})
	return &env{
		rdb: rdb, prefix: prefix,
		client: gochatv1.NewRepoServiceClient(conn),
		flush: func() {
			if err := tc.FlushPrefix(ctx, rdb, prefix); err != nil {
				t.Fatal(err)
			}
		},
	}
}

func TestRepo(t *testing.T) {
	for _, dialect := range []string{"mysql", "sqlite"} {
		t.Run(dialect, func(t *testing.T) {
			e := start(t, dialect)
			t.Run("users", func(t *testing.T) { testUsers(t, e) })
			t.Run("seqs under concurrency", func(t *testing.T) { testSeqs(t, e) })
			t.Run("idempotent store", func(t *testing.T) { testIdempotent(t, e) })
			t.Run("many messages in one call", func(t *testing.T) { testStoreMessages(t, e) })
			t.Run("a Redis loss loses only presence", func(t *testing.T) { testRedisLoss(t, e) })
			t.Run("membership", func(t *testing.T) { testMembership(t, e) })
			t.Run("member lists by version", func(t *testing.T) { testMembersByVersion(t, e) })
			t.Run("a stale member list is never served", func(t *testing.T) { testMemberCacheRace(t, e) })
			t.Run("read pointers and unread", func(t *testing.T) { testRead(t, e) })
			t.Run("presence", func(t *testing.T) { testPresence(t, e) })
			t.Run("registering new sessions checks their users", func(t *testing.T) { testRegisterChecksUsers(t, e) })
			t.Run("sessions on a gateway whose liveness lapsed are offline", func(t *testing.T) { testGatewayLiveness(t, e) })
			t.Run("presence transitions", func(t *testing.T) { testPresenceTransitions(t, e) })
			t.Run("the presence change log", func(t *testing.T) { testPresenceChanges(t, e) })
			t.Run("contacts", func(t *testing.T) { testContacts(t, e) })
			t.Run("dispatch outbox", func(t *testing.T) { testOutbox(t, e) })
			t.Run("event outbox", func(t *testing.T) { testEventOutbox(t, e) })
		})
	}
}

var ctx = context.Background()

func user(t testing.TB, e *env, name string) *gochatv1.User {
	t.Helper()
	r, err := e.client.CreateUser(ctx, &gochatv1.CreateUserRequest{Username: tc.RandomName(name), PasswordHash: "h", Nickname: name})
	if err != nil {
		t.Fatal(err)
	}
	return r.User
}

func group(t testing.TB, e *env, owner *gochatv1.User, members ...*gochatv1.User) *gochatv1.Conversation {
	t.Helper()
	var ids []string
	for _, m := range members {
		ids = append(ids, m.Id)
	}
	r, err := e.client.CreateGroup(ctx, &gochatv1.CreateGroupRequest{Name: "g", OwnerId: owner.Id, MemberIds: ids})
	if err != nil {
		t.Fatal(err)
	}
	return r.Conversation
}

func store(e *env, conv, sender, cmid string) (*gochatv1.StoreMessageResponse, error) {
	return e.client.StoreMessage(ctx, &gochatv1.StoreMessageRequest{ConversationId: conv, SenderId: sender, ClientMsgId: cmid, ContentType: "text", Content: "c-" + cmid})
}

func wantCode(t *testing.T, err error, code apierror.Code) {
	t.Helper()
	if got := apierror.From(err); got == nil || got.Code != code {
		t.Fatalf("error %v, want code %s", err, code)
	}
}

func testUsers(t *testing.T, e *env) {
	u := user(t, e, "u")
	_, err := e.client.CreateUser(ctx, &gochatv1.CreateUserRequest{Username: u.Username, PasswordHash: "x"})
	wantCode(t, err, apierror.AlreadyExists)
	got, err := e.client.GetUser(ctx, &gochatv1.GetUserRequest{Key: &gochatv1.GetUserRequest_Username{Username: u.Username}})
	if err != nil || got.User.Id != u.Id {
		t.Fatalf("by username: %v %v", got, err)
	}
	cred, err := e.client.GetCredentials(ctx, &gochatv1.GetCredentialsRequest{Username: u.Username})
	if err != nil || cred.PasswordHash != "h" {
		t.Fatalf("credentials: %v %v", cred, err)
	}
	_, err = e.client.GetUser(ctx, &gochatv1.GetUserRequest{Key: &gochatv1.GetUserRequest_Id{Id: "not-an-id"}})
	wantCode(t, err, apierror.NotFound)
}

// Many writers, several conversations: every conversation's seqs are exactly
// 1..n, whatever the batching did.
func testSeqs(t *testing.T, e *env) {
	owner := user(t, e, "o")
	convs := []*gochatv1.Conversation{group(t, e, owner), group(t, e, owner), group(t, e, owner)}
	const writers, each = 8, 40
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				c := convs[(w+i)%len(convs)]
				if _, err := store(e, c.Id, owner.Id, fmt.Sprintf("w%d-%d", w, i)); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	total := checkGapless(t, e, convs, owner.Id)
	for _, c := range convs {
		n := len(allSeqs(t, e, c.Id, owner.Id))
		got, err := e.client.GetConversation(ctx, &gochatv1.GetConversationRequest{ConversationId: c.Id, ViewerId: owner.Id})
		if err != nil || got.Conversation.MaxSeq != int64(n) || got.Conversation.ReadSeq != got.Conversation.MaxSeq {
			t.Fatalf("conversation %+v %v: max_seq must match, own messages count as read", got, err)
		}
	}
	if total != writers*each {
		t.Fatalf("stored %d messages, want %d", total, writers*each)
	}
}

func allSeqs(t *testing.T, e *env, conv, viewer string) []int64 {
	t.Helper()
	var out []int64
	after := int64(0)
	for {
		r, err := e.client.ListMessages(ctx, &gochatv1.ListMessagesRequest{ConversationId: conv, ViewerId: viewer, AfterSeq: after, Limit: 200})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range r.Messages {
			out = append(out, m.Seq)
			after = m.Seq
		}
		if !r.HasMore {
			return out
		}
	}
}

func testIdempotent(t *testing.T, e *env) {
	a := user(t, e, "a")
	g := group(t, e, a)
	other := group(t, e, a)
	const n = 10
	results := make([]*gochatv1.StoreMessageResponse, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := store(e, g.Id, a.Id, "same")
			if err != nil {
				t.Error(err)
				return
			}
			results[i] = r
		}()
	}
	wg.Wait()
	dups := 0
	for _, r := range results {
		if r == nil {
			t.FailNow()
		}
		if r.Message.Id != results[0].Message.Id || r.Message.Seq != 1 {
			t.Fatalf("concurrent retries gave different messages: %+v vs %+v", r.Message, results[0].Message)
		}
		if r.Duplicate {
			dups++
		}
	}
	if dups != n-1 {
		t.Fatalf("%d of %d calls said duplicate, want %d", dups, n, n-1)
	}
	if seqs := allSeqs(t, e, g.Id, a.Id); len(seqs) != 1 {
		t.Fatalf("stored %d copies", len(seqs))
	}
	_, err := store(e, other.Id, a.Id, "same")
	wantCode(t, err, apierror.AlreadyExists)

	// One client_msg_id sent at once to many conversations: they are stored
	// by different workers (each owns its share of the conversations), so
	// the race is settled by the unique index, not by one batch's dedupe.
	// Exactly one is stored; the others are told the id is taken.
	var convs []*gochatv1.Conversation
	for i := 0; i < 8; i++ {
		convs = append(convs, group(t, e, a))
	}
	codes := make([]apierror.Code, len(convs))
	for i, c := range convs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := store(e, c.Id, a.Id, "raced")
			codes[i] = "ok"
			if err != nil {
				codes[i] = apierror.From(err).Code
			}
		}()
	}
	wg.Wait()
	stored := 0
	for i, code := range codes {
		switch code {
		case "ok":
			stored++
			if seqs := allSeqs(t, e, convs[i].Id, a.Id); len(seqs) != 1 {
				t.Fatalf("conversation %d holds %d messages, want 1", i, len(seqs))
			}
		case apierror.AlreadyExists:
			if seqs := allSeqs(t, e, convs[i].Id, a.Id); len(seqs) != 0 {
				t.Fatalf("conversation %d holds %d messages after its send was refused", i, len(seqs))
			}
		default:
			t.Fatalf("send %d: code %s, want ok or %s", i, code, apierror.AlreadyExists)
		}
	}
	if stored != 1 {
		t.Fatalf("%d conversations stored the one client_msg_id, want 1 (codes %v)", stored, codes)
	}
}

// testRedisLoss: Redis holds only caches and presence (seqs live in MySQL).
// After it loses everything, member lists come from the database in full,
// presence is empty until the gateways renew, and a renewal restores it.
func testRedisLoss(t *testing.T, e *env) {
	a, b := user(t, e, "a"), user(t, e, "b")
	g := group(t, e, a, b)
	before := memberIDs(t, e, g.Id) // cached now
	sess := &gochatv1.Session{UserId: b.Id, SessionId: "s1", Gateway: "gw:1"}
	if _, err := e.client.RegisterSessions(ctx, &gochatv1.RegisterSessionsRequest{Sessions: []*gochatv1.Session{sess}, TtlMs: 60000}); err != nil {
		t.Fatal(err)
	}
	live := func() int {
		r, err := e.client.GetPresence(ctx, &gochatv1.GetPresenceRequest{UserIds: []string{b.Id}})
		if err != nil {
			t.Fatal(err)
		}
		return len(r.Sessions)
	}
	if live() != 1 {
		t.Fatal("a registered session is not in presence")
	}
	e.flush()
	if after := memberIDs(t, e, g.Id); fmt.Sprint(after) != fmt.Sprint(before) || len(after) != 2 {
		t.Fatalf("members after Redis lost its data: %v, want %v", after, before)
	}
	if n := live(); n != 0 {
		t.Fatalf("%d sessions in presence after Redis lost its data", n)
	}
	if _, err := e.client.RegisterSessions(ctx, &gochatv1.RegisterSessionsRequest{Sessions: []*gochatv1.Session{sess}, TtlMs: 60000}); err != nil {
		t.Fatal(err)
	}
	if live() != 1 {
		t.Fatal("a renewal did not restore presence")
	}
	r, err := store(e, g.Id, a.Id, "after")
	if err != nil || r.Message.Seq != 1 {
		t.Fatalf("store after the loss: %v %v", r, err)
	}
}

func memberIDs(t *testing.T, e *env, conv string) []string {
	t.Helper()
	r, err := e.client.GetMembers(ctx, &gochatv1.GetMembersRequest{ConversationIds: []string{conv}})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range r.Lists[0].Members {
		out = append(out, m.UserId)
	}
	sort.Strings(out)
	return out
}

func testMembership(t *testing.T, e *env) {
	owner, m, newcomer, stranger := user(t, e, "o"), user(t, e, "m"), user(t, e, "n"), user(t, e, "s")
	g := group(t, e, owner, m)
	if got := memberIDs(t, e, g.Id); len(got) != 2 { // fills the cache
		t.Fatalf("members %v", got)
	}
	tests := []struct {
		name  string
		actor *gochatv1.User
		add   []string
		code  apierror.Code
	}{
		{"plain member may not add", m, []string{newcomer.Id}, apierror.PermissionDenied},
		{"stranger sees no group", stranger, []string{stranger.Id}, apierror.NotFound},
		{"unknown user", owner, []string{"0000000000000000000000000z"}, apierror.NotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.client.AddMembers(ctx, &gochatv1.AddMembersRequest{ConversationId: g.Id, ActorId: tt.actor.Id, UserIds: tt.add})
			wantCode(t, err, tt.code)
		})
	}
	r, err := e.client.AddMembers(ctx, &gochatv1.AddMembersRequest{ConversationId: g.Id, ActorId: owner.Id, UserIds: []string{newcomer.Id, m.Id}})
	if err != nil || len(r.AddedUserIds) != 1 || r.AddedUserIds[0] != newcomer.Id {
		t.Fatalf("add: %v %v", r, err)
	}
	if got := memberIDs(t, e, g.Id); len(got) != 3 {
		t.Fatalf("the member cache kept the old list: %v", got)
	}
	_, err = store(e, g.Id, stranger.Id, "x")
	wantCode(t, err, apierror.NotFound)
	_, err = e.client.ListMessages(ctx, &gochatv1.ListMessagesRequest{ConversationId: g.Id, ViewerId: stranger.Id})
	wantCode(t, err, apierror.NotFound)
	_, err = e.client.RemoveMember(ctx, &gochatv1.RemoveMemberRequest{ConversationId: g.Id, ActorId: m.Id, UserId: owner.Id})
	wantCode(t, err, apierror.PermissionDenied)
	// The owner leaves: the oldest member becomes owner.
	if _, err := e.client.RemoveMember(ctx, &gochatv1.RemoveMemberRequest{ConversationId: g.Id, ActorId: owner.Id, Leave: true}); err != nil {
		t.Fatal(err)
	}
	c, err := e.client.GetConversation(ctx, &gochatv1.GetConversationRequest{ConversationId: g.Id, ViewerId: m.Id})
	if err != nil || c.Conversation.OwnerId != m.Id {
		t.Fatalf("after the owner left: %+v %v", c, err)
	}
	if got := memberIDs(t, e, g.Id); len(got) != 2 {
		t.Fatalf("members after leave %v", got)
	}
	// Direct conversations are found again, not made twice, from either side.
	d1, err := e.client.GetOrCreateDirect(ctx, &gochatv1.GetOrCreateDirectRequest{UserId: m.Id, PeerId: stranger.Id})
	if err != nil || !d1.Created {
		t.Fatal(d1, err)
	}
	d2, err := e.client.GetOrCreateDirect(ctx, &gochatv1.GetOrCreateDirectRequest{UserId: stranger.Id, PeerId: m.Id})
	if err != nil || d2.Created || d2.Conversation.Id != d1.Conversation.Id {
		t.Fatal(d2, err)
	}
	_, err = e.client.AddMembers(ctx, &gochatv1.AddMembersRequest{ConversationId: d1.Conversation.Id, ActorId: m.Id, UserIds: []string{owner.Id}})
	wantCode(t, err, apierror.InvalidArgument)
}

// testMembersByVersion: GetMembers answers a list the caller holds at its
// current version with unchanged and no members, and in full with a new
// version once the members change; an unknown conversation is answered
// empty, never unchanged.
func testMembersByVersion(t *testing.T, e *env) {
	owner, m, newcomer := user(t, e, "vo"), user(t, e, "vm"), user(t, e, "vn")
	g := group(t, e, owner, m)
	get := func(known map[string]int64, ids ...string) []*gochatv1.MemberList {
		t.Helper()
		r, err := e.client.GetMembers(ctx, &gochatv1.GetMembersRequest{ConversationIds: ids, KnownVersions: known})
		if err != nil {
			t.Fatal(err)
		}
		return r.Lists
	}
	first := get(nil, g.Id)[0]
	if first.Unchanged || len(first.Members) != 2 {
		t.Fatalf("first read = %+v, want 2 members", first)
	}
	again := get(map[string]int64{g.Id: first.Version}, g.Id)[0]
	if !again.Unchanged || len(again.Members) != 0 || again.Version != first.Version {
		t.Fatalf("read at the held version = %+v, want unchanged and no members", again)
	}
	if _, err := e.client.AddMembers(ctx, &gochatv1.AddMembersRequest{ConversationId: g.Id, ActorId: owner.Id, UserIds: []string{newcomer.Id}}); err != nil {
		t.Fatal(err)
	}
	changed := get(map[string]int64{g.Id: first.Version}, g.Id)[0]
	if changed.Unchanged || len(changed.Members) != 3 || changed.Version <= first.Version {
		t.Fatalf("read after a member joined = %+v, want 3 members at a newer version", changed)
	}
	unknown := "0000000000000000000000000z"
	if l := get(map[string]int64{unknown: 0}, unknown)[0]; l.Unchanged || len(l.Members) != 0 {
		t.Fatalf("unknown conversation = %+v, want empty and not unchanged", l)
	}
	_, err := e.client.GetMembers(ctx, &gochatv1.GetMembersRequest{ConversationIds: []string{g.Id}, KnownVersions: map[string]int64{g.Id: 1, unknown: 1}})
	wantCode(t, err, apierror.InvalidArgument)
}

func testRead(t *testing.T, e *env) {
	a, b := user(t, e, "a"), user(t, e, "b")
	g := group(t, e, a, b)
	for i := 0; i < 5; i++ {
		if _, err := store(e, g.Id, a.Id, fmt.Sprint("r", i)); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		seq       int64
		wantRead  int64
		wantMoved bool
	}{{2, 2, true}, {1, 2, false}, {2, 2, false}, {50, 5, true}}
	for _, s := range steps {
		r, err := e.client.UpdateReadSeq(ctx, &gochatv1.UpdateReadSeqRequest{ConversationId: g.Id, UserId: b.Id, Seq: s.seq})
		if err != nil || r.ReadSeq != s.wantRead || r.Moved != s.wantMoved {
			t.Fatalf("read to %d: %+v %v, want %d moved=%v", s.seq, r, err, s.wantRead, s.wantMoved)
		}
	}
	_, err := e.client.UpdateReadSeq(ctx, &gochatv1.UpdateReadSeqRequest{ConversationId: g.Id, UserId: user(t, e, "x").Id, Seq: 1})
	wantCode(t, err, apierror.NotFound)
	if _, err := store(e, g.Id, a.Id, "r-last"); err != nil {
		t.Fatal(err)
	}
	u, err := e.client.UnreadCounts(ctx, &gochatv1.UnreadCountsRequest{UserIds: []string{a.Id, b.Id}})
	if err != nil || u.Counts[0].Unread != 0 || u.Counts[1].Unread != 1 {
		t.Fatalf("unread %+v %v", u, err)
	}
}

func testPresence(t *testing.T, e *env) {
	a, b := user(t, e, "a"), user(t, e, "b")
	s1 := &gochatv1.Session{UserId: a.Id, SessionId: "s1", Gateway: "10.0.0.1:9000"}
	s2 := &gochatv1.Session{UserId: a.Id, SessionId: "s2", Gateway: "10.0.0.2:9000"}
	s3 := &gochatv1.Session{UserId: b.Id, SessionId: "s3", Gateway: "10.0.0.1:9000"}
	if _, err := e.client.RegisterSessions(ctx, &gochatv1.RegisterSessionsRequest{Sessions: []*gochatv1.Session{s1, s2}, TtlMs: 60000}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.RegisterSessions(ctx, &gochatv1.RegisterSessionsRequest{Sessions: []*gochatv1.Session{s3}, TtlMs: 1000}); err != nil {
		t.Fatal(err)
	}
	lookup := func() map[string]string {
		r, err := e.client.GetPresence(ctx, &gochatv1.GetPresenceRequest{UserIds: []string{a.Id, b.Id}})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, s := range r.Sessions {
			out[s.SessionId] = s.UserId + "@" + s.Gateway
		}
		return out
	}
	if got := lookup(); len(got) != 3 || got["s2"] != a.Id+"@10.0.0.2:9000" {
		t.Fatalf("presence %v", got)
	}
	if _, err := e.client.UnregisterSessions(ctx, &gochatv1.UnregisterSessionsRequest{Sessions: []*gochatv1.Session{s1}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // s3's TTL runs out
	if got := lookup(); len(got) != 1 || got["s2"] == "" {
		t.Fatalf("after unregister and expiry: %v", got)
	}
	_, err := e.client.RegisterSessions(ctx, &gochatv1.RegisterSessionsRequest{Sessions: []*gochatv1.Session{{UserId: a.Id}}, TtlMs: 1000})
	wantCode(t, err, apierror.InvalidArgument)
}

// testPresenceChanges: a session that comes or goes puts its user in the
// change log once, a renewal does not, and a reader is told when the log
// cannot say everything since its position (over its limit, or Redis lost it).
func testPresenceChanges(t *testing.T, e *env) {
	a, b, c := user(t, e, "a"), user(t, e, "b"), user(t, e, "c")
	sa1 := &gochatv1.Session{UserId: a.Id, SessionId: "ca1", Gateway: "gw:1"}
	sa2 := &gochatv1.Session{UserId: a.Id, SessionId: "ca2", Gateway: "gw:2"}
	sb := &gochatv1.Session{UserId: b.Id, SessionId: "cb", Gateway: "gw:1"}
	register := func(ss ...*gochatv1.Session) {
		t.Helper()
		if _, err := e.client.RegisterSessions(ctx, &gochatv1.RegisterSessionsRequest{Sessions: ss, TtlMs: 60000}); err != nil {
			t.Fatal(err)
		}
	}
	unregister := func(ss ...*gochatv1.Session) {
		t.Helper()
		if _, err := e.client.UnregisterSessions(ctx, &gochatv1.UnregisterSessionsRequest{Sessions: ss}); err != nil {
			t.Fatal(err)
		}
	}
	changes := func(after int64, limit int32) *gochatv1.GetPresenceChangesResponse {
		t.Helper()
		r, err := e.client.GetPresenceChanges(ctx, &gochatv1.GetPresenceChangesRequest{AfterGen: after, Limit: limit})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	users := func(r *gochatv1.GetPresenceChangesResponse) string {
		var out []string
		for _, c := range r.Changes {
			if c.Gen <= 0 || c.Gen > r.Gen {
				t.Fatalf("change %v outside (0, %d]", c, r.Gen)
			}
			out = append(out, c.UserId)
		}
		sort.Strings(out)
		return strings.Join(out, ",")
	}
	sorted := func(ids ...string) string { sort.Strings(ids); return strings.Join(ids, ",") }
	pos := changes(0, 10).Gen

	steps := []struct {
		name string
		do   func()
		want string
	}{
		{"new sessions", func() { register(sa1, sa2, sb) }, sorted(a.Id, b.Id)},
		{"renewals", func() { register(sa1, sa2, sb) }, ""},
		{"one more session", func() { register(sb, &gochatv1.Session{UserId: b.Id, SessionId: "cb2", Gateway: "gw:2"}) }, b.Id},
		{"a session goes", func() { unregister(sa1) }, a.Id},
		{"a session already gone", func() { unregister(sa1) }, ""},
	}
	for _, st := range steps {
		st.do()
		r := changes(pos, 10)
		if got := users(r); got != st.want || !r.Complete {
			t.Fatalf("%s: changed %q (complete %v), want %q", st.name, got, r.Complete, st.want)
		}
		pos = r.Gen
	}

	p, err := e.client.GetPresence(ctx, &gochatv1.GetPresenceRequest{UserIds: []string{a.Id}, SessionsOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Sessions) != 1 || len(p.Users) != 0 || p.ChangeGen != pos {
		t.Fatalf("sessions only: %d sessions, %d users, position %d; want 1, 0, %d", len(p.Sessions), len(p.Users), p.ChangeGen, pos)
	}

	register(&gochatv1.Session{UserId: c.Id, SessionId: "cc", Gateway: "gw:1"}, &gochatv1.Session{UserId: a.Id, SessionId: "ca3", Gateway: "gw:1"})
	if r := changes(pos, 1); r.Complete || len(r.Changes) != 1 {
		t.Fatalf("two changes read with a limit of 1: %d changes, complete %v; want 1, false", len(r.Changes), r.Complete)
	}
	if r := changes(pos+1000, 10); r.Complete {
		t.Fatal("a position ahead of the log (Redis lost it) reads as complete")
	}
	for _, bad := range []*gochatv1.GetPresenceChangesRequest{{AfterGen: -1, Limit: 10}, {Limit: 0}, {Limit: repo.MaxPresenceChanges + 1}} {
		_, err := e.client.GetPresenceChanges(ctx, bad)
		wantCode(t, err, apierror.InvalidArgument)
	}

	// The log keeps its most recent users: a reader behind what it
	// trimmed is told, one after it is not.
	small := repo.WithChangeLogBound(repo.NewPresence(e.rdb, e.prefix+"trim:"), 3)
	for i := range 5 {
		u := fmt.Sprintf("u%d", i)
		if _, err := small.Register(ctx, []*gochatv1.Session{{UserId: u, SessionId: "s", Gateway: "gw:1"}}, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		after    int64
		complete bool
		want     string
	}{{0, false, "u2,u3,u4"}, {1, false, "u2,u3,u4"}, {2, true, "u2,u3,u4"}, {4, true, "u4"}} {
		got, err := small.Changes(ctx, tt.after, 10)
		if err != nil {
			t.Fatal(err)
		}
		if r := (&gochatv1.GetPresenceChangesResponse{Changes: got.Changes, Gen: got.Gen}); users(r) != tt.want || got.Complete != tt.complete || got.Gen != 5 {
			t.Errorf("after %d: %q complete %v at %d, want %q complete %v at 5", tt.after, users(r), got.Complete, got.Gen, tt.want, tt.complete)
		}
	}
}

func testRegisterChecksUsers(t *testing.T, e *env) {
	a, b := user(t, e, "a"), user(t, e, "b")
	gone := ids.New() // a valid id of no user: never created, or deleted
	sess := func(id, user string) *gochatv1.Session {
		return &gochatv1.Session{UserId: user, SessionId: id + "-" + tc.RandomName(""), Gateway: "10.0.0.9:9000"}
	}
	tests := []struct {
		name        string
		sessions    []*gochatv1.Session
		check       bool
		wantUnknown []string
		wantOnline  []string // users with a registered session afterwards
	}{
		{"all exist", []*gochatv1.Session{sess("1", a.Id), sess("2", b.Id)}, true, nil, []string{a.Id, b.Id}},
		{"a missing user among them, twice", []*gochatv1.Session{sess("1", a.Id), sess("2", gone), sess("3", gone)}, true, []string{gone}, []string{a.Id}},
		{"only missing users", []*gochatv1.Session{sess("1", gone)}, true, []string{gone}, nil},
		{"a renewal does not check", []*gochatv1.Session{sess("1", gone)}, false, nil, []string{gone}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := e.client.RegisterSessions(ctx, &gochatv1.RegisterSessionsRequest{Sessions: tt.sessions, TtlMs: 60000, CheckUsers: tt.check})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(r.UnknownUsers, tt.wantUnknown) {
				t.Fatalf("unknown users %v, want %v", r.UnknownUsers, tt.wantUnknown)
			}
			var users []string
			for _, s := range tt.sessions {
				users = append(users, s.UserId)
			}
			p, err := e.client.GetPresence(ctx, &gochatv1.GetPresenceRequest{UserIds: users})
			if err != nil {
				t.Fatal(err)
			}
			registered := map[string]bool{}
			for _, s := range p.Sessions {
				for _, want := range tt.sessions {
					if s.SessionId == want.SessionId {
						registered[s.UserId] = true
					}
				}
			}
			if len(registered) != len(tt.wantOnline) {
				t.Fatalf("registered users %v, want %v", registered, tt.wantOnline)
			}
			for _, u := range tt.wantOnline {
				if !registered[u] {
					t.Fatalf("registered users %v, want %v", registered, tt.wantOnline)
				}
			}
			if _, err := e.client.UnregisterSessions(ctx, &gochatv1.UnregisterSessionsRequest{Sessions: tt.sessions}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func testOutbox(t *testing.T, e *env) {
	// Empty what the earlier subtests left, acknowledging it all.
	for {
		r, err := e.client.ListUndispatched(ctx, &gochatv1.ListUndispatchedRequest{StoredBeforeMs: time.Now().Add(time.Minute).UnixMilli(), Limit: 200})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Messages) == 0 {
			break
		}
		var ids []string
		for _, m := range r.Messages {
			ids = append(ids, m.Id)
		}
		if _, err := e.client.AckDispatched(ctx, &gochatv1.AckDispatchedRequest{MessageIds: ids}); err != nil {
			t.Fatal(err)
		}
	}
	a := user(t, e, "a")
	g := group(t, e, a)
	var ids []string
	for i := 0; i < 3; i++ {
		r, err := store(e, g.Id, a.Id, fmt.Sprint("o", i))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.Message.Id)
	}
	if _, err := store(e, g.Id, a.Id, "o0"); err != nil { // a retry adds nothing
		t.Fatal(err)
	}
	pending := func() []string {
		r, err := e.client.ListUndispatched(ctx, &gochatv1.ListUndispatchedRequest{StoredBeforeMs: time.Now().Add(time.Minute).UnixMilli(), Limit: 200})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range r.Messages {
			if m.ConversationId == g.Id {
				out = append(out, m.Id)
			}
		}
		return out
	}
	r, err := e.client.ListUndispatched(ctx, &gochatv1.ListUndispatchedRequest{StoredBeforeMs: time.Now().Add(-time.Hour).UnixMilli()})
	if err != nil || len(r.Messages) != 0 {
		t.Fatalf("messages younger than the cutoff were listed: %v %v", r, err)
	}
	if got := pending(); len(got) != 3 || got[0] != ids[0] || got[2] != ids[2] {
		t.Fatalf("outbox %v, want %v in seq order", got, ids)
	}
	// Claimed: a second relay (another replica) does not get them while the lease lasts.
	if got := pending(); len(got) != 0 {
		t.Fatalf("rows claimed a moment ago were listed again: %v", got)
	}
	if _, err := e.client.AckDispatched(ctx, &gochatv1.AckDispatchedRequest{MessageIds: ids[:2]}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // the 1s lease of the test server ends
	if got := pending(); len(got) != 1 || got[0] != ids[2] {
		t.Fatalf("outbox after ack and the lease's end %v", got)
	}
	_, err = e.client.ListUndispatched(ctx, &gochatv1.ListUndispatchedRequest{})
	wantCode(t, err, apierror.InvalidArgument)
}

// A fill that read the member list before a removal and writes it to the
// cache after the removal's invalidation puts the old list back; so does an
// invalidation that failed. Neither may make a removed member a recipient.
func testMemberCacheRace(t *testing.T, e *env) {
	owner, gone := user(t, e, "o"), user(t, e, "g")
	g := group(t, e, owner, gone)
	if got := memberIDs(t, e, g.Id); len(got) != 2 { // fills the cache
		t.Fatalf("members %v", got)
	}
	key := e.prefix + "members:" + g.Id
	before, err := e.rdb.Get(ctx, key).Result()
	if err != nil {
		t.Fatalf("the member list was not cached: %v", err)
	}
	if _, err := e.client.RemoveMember(ctx, &gochatv1.RemoveMemberRequest{ConversationId: g.Id, ActorId: owner.Id, UserId: gone.Id}); err != nil {
		t.Fatal(err)
	}
	// The racing fill lands after the invalidation.
	if err := e.rdb.Set(ctx, key, before, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	for _, id := range memberIDs(t, e, g.Id) {
		if id == gone.Id {
			t.Fatal("a removed member is served from a stale cache entry")
		}
	}
}

// testEventOutbox: group changes and read pointer moves record their event
// in the change's transaction; relays claim them in id order, and never a
// conversation's later events while another relay holds its earlier ones.
func testEventOutbox(t *testing.T, e *env) {
	listEvents := func(limit int32) []*gochatv1.OutboxEvent {
		t.Helper()
		r, err := e.client.ListUndispatched(ctx, &gochatv1.ListUndispatchedRequest{StoredBeforeMs: time.Now().Add(time.Minute).UnixMilli(), Limit: limit})
		if err != nil {
			t.Fatal(err)
		}
		return r.Events
	}
	ack := func(evs ...*gochatv1.OutboxEvent) {
		t.Helper()
		var ids []string
		for _, ev := range evs {
			ids = append(ids, ev.Id)
		}
		if _, err := e.client.AckDispatched(ctx, &gochatv1.AckDispatchedRequest{EventIds: ids}); err != nil {
			t.Fatal(err)
		}
	}
	// What earlier subtests left: testOutbox's claims also leased their
	// events for the test server's 1s, and a held event is not listed, so
	// wait for the leases to end or they come back in the first claim below.
	time.Sleep(1100 * time.Millisecond)
	for evs := listEvents(200); len(evs) > 0; evs = listEvents(200) {
		ack(evs...)
	}
	a, b, c := user(t, e, "a"), user(t, e, "b"), user(t, e, "c")
	g, err := e.client.CreateGroup(ctx, &gochatv1.CreateGroupRequest{Name: "g", OwnerId: a.Id, MemberIds: []string{b.Id}})
	if err != nil {
		t.Fatal(err)
	}
	conv := g.Conversation.Id
	added, err := e.client.AddMembers(ctx, &gochatv1.AddMembersRequest{ConversationId: conv, ActorId: a.Id, UserIds: []string{c.Id}})
	if err != nil {
		t.Fatal(err)
	}
	if again, err := e.client.AddMembers(ctx, &gochatv1.AddMembersRequest{ConversationId: conv, ActorId: a.Id, UserIds: []string{c.Id}}); err != nil || again.Event != nil {
		t.Fatalf("adding a member again recorded %v (%v)", again.GetEvent(), err)
	}
	if _, err := store(e, conv, a.Id, "ev1"); err != nil {
		t.Fatal(err)
	}
	read, err := e.client.UpdateReadSeq(ctx, &gochatv1.UpdateReadSeqRequest{ConversationId: conv, UserId: b.Id, Seq: 1, OriginSessionId: "sess-b"})
	if err != nil {
		t.Fatal(err)
	}
	if same, err := e.client.UpdateReadSeq(ctx, &gochatv1.UpdateReadSeqRequest{ConversationId: conv, UserId: b.Id, Seq: 1}); err != nil || same.Event != nil || same.Moved {
		t.Fatalf("a pointer that did not move recorded %v (%v)", same.GetEvent(), err)
	}
	removed, err := e.client.RemoveMember(ctx, &gochatv1.RemoveMemberRequest{ConversationId: conv, ActorId: a.Id, UserId: c.Id})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		ev   *gochatv1.OutboxEvent
		kind gochatv1.GroupEventKind // unset: a read event
		user string
	}{
		{"created", g.Event, gochatv1.GroupEventKind_GROUP_EVENT_KIND_GROUP_CREATED, a.Id},
		{"added", added.Event, gochatv1.GroupEventKind_GROUP_EVENT_KIND_MEMBER_ADDED, c.Id},
		{"read", read.Event, 0, b.Id},
		{"removed", removed.Event, gochatv1.GroupEventKind_GROUP_EVENT_KIND_MEMBER_REMOVED, c.Id},
	}
	for _, tt := range tests {
		switch ev := tt.ev.GetEvent(); {
		case tt.ev == nil || tt.ev.Id == "":
			t.Fatalf("%s: no event recorded", tt.name)
		case tt.kind == 0 && (ev.GetRead().GetUserId() != tt.user || ev.GetRead().GetSeq() != 1 || ev.OriginSessionId != "sess-b"):
			t.Fatalf("%s: %v", tt.name, ev)
		case tt.kind != 0 && (ev.GetGroup().GetKind() != tt.kind || ev.GetGroup().GetUserIds()[0] != tt.user || ev.GetGroup().GetConversationId() != conv):
			t.Fatalf("%s: %v", tt.name, ev)
		}
	}
	if got := removed.Event.Event.ExtraRecipients; len(got) != 1 || got[0] != c.Id {
		t.Fatalf("the removed member is not an extra recipient: %v", got)
	}

	// A relay claims the oldest two; another relay gets none of the
	// conversation's later events while those are held, but other
	// conversations' events.
	first := listEvents(2)
	if len(first) != 2 || first[0].Id != g.Event.Id || first[1].Id != added.Event.Id {
		t.Fatalf("first claim %v, want the created and added events", first)
	}
	other := group(t, e, b)
	var otherClaimed bool
	for _, ev := range listEvents(200) {
		if ev.Event.GetGroup().GetConversationId() == conv || ev.Event.GetRead().GetConversationId() == conv {
			t.Fatalf("a second relay got %v while the conversation's earlier events are held", ev)
		}
		otherClaimed = otherClaimed || ev.Event.GetGroup().GetConversationId() == other.Id
	}
	if !otherClaimed {
		t.Fatal("a second relay did not get another conversation's event")
	}
	ack(first...)
	time.Sleep(1100 * time.Millisecond) // the 1s lease of the test server ends
	var rest []string
	for _, ev := range listEvents(200) {
		if ev.Event.GetGroup().GetConversationId() == conv || ev.Event.GetRead().GetConversationId() == conv {
			rest = append(rest, ev.Id)
		}
	}
	if len(rest) != 2 || rest[0] != read.Event.Id || rest[1] != removed.Event.Id {
		t.Fatalf("after the ack and the lease: %v, want [%s %s]", rest, read.Event.Id, removed.Event.Id)
	}
	_, err = e.client.AckDispatched(ctx, &gochatv1.AckDispatchedRequest{EventIds: []string{"x1"}})
	wantCode(t, err, apierror.InvalidArgument)

	// The read and removed events still wait: once they have waited past
	// EventBacklogAge (their publish was lost), the conversation's next
	// event is behind them, and im-logic leaves it to the relay rather than
	// let it overtake them. Another conversation's event is behind nothing,
	// and so is the next one once the waiting ones are published.
	time.Sleep(repo.EventBacklogAge)
	late, err := e.client.AddMembers(ctx, &gochatv1.AddMembersRequest{ConversationId: conv, ActorId: a.Id, UserIds: []string{c.Id}})
	if err != nil {
		t.Fatal(err)
	}
	if late.Event == nil || !late.Event.Behind {
		t.Fatalf("an event after ones waiting %s is not behind them: %v", repo.EventBacklogAge, late.GetEvent())
	}
	fresh, err := e.client.CreateGroup(ctx, &gochatv1.CreateGroupRequest{Name: "fresh", OwnerId: a.Id, MemberIds: []string{b.Id}})
	if err != nil {
		t.Fatal(err)
	}
	if fresh.Event == nil || fresh.Event.Behind {
		t.Fatalf("a new conversation's event is behind another's: %v", fresh.GetEvent())
	}
	var waiting []*gochatv1.OutboxEvent
	for _, ev := range listEvents(200) {
		if ev.Event.GetGroup().GetConversationId() == conv || ev.Event.GetRead().GetConversationId() == conv {
			waiting = append(waiting, ev)
		}
	}
	if len(waiting) != 3 {
		t.Fatalf("%d of the conversation's events wait, want read, removed and the late add", len(waiting))
	}
	ack(waiting...)
	next, err := e.client.RemoveMember(ctx, &gochatv1.RemoveMemberRequest{ConversationId: conv, ActorId: a.Id, UserId: c.Id})
	if err != nil {
		t.Fatal(err)
	}
	if next.Event == nil || next.Event.Behind {
		t.Fatalf("an event with nothing waiting before it is behind: %v", next.GetEvent())
	}
}

func testGatewayLiveness(t *testing.T, e *env) {
	a, b := user(t, e, "a"), user(t, e, "b")
	onLive := &gochatv1.Session{UserId: a.Id, SessionId: "l1", Gateway: "10.1.0.1:9000"}
	onDying := &gochatv1.Session{UserId: a.Id, SessionId: "l2", Gateway: "10.1.0.2:9000"}
	onlyDying := &gochatv1.Session{UserId: b.Id, SessionId: "l3", Gateway: "10.1.0.2:9000"}
	if _, err := e.client.RegisterSessions(ctx, &gochatv1.RegisterSessionsRequest{Sessions: []*gochatv1.Session{onLive, onDying, onlyDying}, TtlMs: 60000}); err != nil {
		t.Fatal(err)
	}
	alive := func(gw string, ttl time.Duration) {
		t.Helper()
		if _, err := e.client.GatewayAlive(ctx, &gochatv1.GatewayAliveRequest{Gateway: gw, TtlMs: ttl.Milliseconds()}); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name           string
		before         func()
		sessions       []string
		aOnline, bOnln bool
	}{
		// A gateway that never recorded its liveness is not dead.
		{"nothing recorded", func() {}, []string{"l1", "l2", "l3"}, true, true},
		{"both alive", func() { alive(onLive.Gateway, time.Minute); alive(onDying.Gateway, time.Minute) }, []string{"l1", "l2", "l3"}, true, true},
		{"one lapsed", func() { alive(onDying.Gateway, 0) }, []string{"l1"}, true, false},
		{"both lapsed", func() { alive(onLive.Gateway, 0) }, nil, false, false},
		{"renewed", func() { alive(onLive.Gateway, time.Minute); alive(onDying.Gateway, time.Minute) }, []string{"l1", "l2", "l3"}, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.before()
			r, err := e.client.GetPresence(ctx, &gochatv1.GetPresenceRequest{UserIds: []string{a.Id, b.Id}})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range r.Sessions {
				got = append(got, s.SessionId)
			}
			sort.Strings(got)
			if fmt.Sprint(got) != fmt.Sprint(tt.sessions) {
				t.Fatalf("sessions %v, want %v", got, tt.sessions)
			}
			if r.Users[0].Online != tt.aOnline || r.Users[1].Online != tt.bOnln {
				t.Fatalf("online %v %v, want %v %v", r.Users[0].Online, r.Users[1].Online, tt.aOnline, tt.bOnln)
			}
		})
	}
	_, err := e.client.GatewayAlive(ctx, &gochatv1.GatewayAliveRequest{Gateway: "", TtlMs: 1000})
	wantCode(t, err, apierror.InvalidArgument)
}
