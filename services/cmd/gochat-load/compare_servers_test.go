package main

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gochat/gochat/services/testcluster"
)

// checkConnect and checkFanout hold what both servers' runs must show, whatever their speed.
func checkConnect(t *testing.T, res compareResult, conns int) {
	t.Helper()
	t.Logf("%+v", res)
	if res.Failed != 0 || res.Conns != conns || res.ConnectsPerSec <= 0 || res.HandshakeP50Ms <= 0 || res.HandshakeP99Ms < res.HandshakeP50Ms {
		t.Errorf("connect: %+v", res)
	}
	if res.RSSAfterMiB <= 0 || res.RSSBeforeMiB <= 0 || res.LostInHold != 0 {
		t.Errorf("connect: the server's RSS was not read: %+v", res)
	}
}

func checkFanout(t *testing.T, res compareResult, sessions int64) {
	t.Helper()
	t.Logf("%+v", res)
	if res.Published < 1 || res.Expected != res.Published*sessions || res.Delivered != res.Expected || res.Duplicates != 0 {
		t.Errorf("fan-out: published %d, expected %d (want published x %d sessions), delivered %d, duplicates %d",
			res.Published, res.Expected, sessions, res.Delivered, res.Duplicates)
	}
	if res.DeliverP50Ms <= 0 || res.DeliverP99Ms < res.DeliverP50Ms || res.ToolFrames < res.Delivered {
		t.Errorf("fan-out: %+v", res)
	}
}

// TestCompareGoChat drives GoChat, as separate processes on MariaDB, Redis
// and Kafka, through the compare scenarios: every session connects, the
// gateway's RSS is read, and every message reaches every session of every
// member, counted by unique (conversation_id, seq).
func TestCompareGoChat(t *testing.T) {
	c := testcluster.StartCluster(t, testcluster.Options{LogicFlags: []string{"--max-group-members", "50"}})
	_, port, _ := net.SplitHostPort(c.HTTP)
	pid, err := listenerPID(port)
	if err != nil {
		t.Fatal(err)
	}
	ad := &gochatAdapter{base: c.URL()}
	res, err := runConnect(ad, compareOpts{conns: 30, users: 3, parallel: 8, hold: time.Second, pids: []int{pid}})
	if err != nil {
		t.Fatal(err)
	}
	checkConnect(t, res, 30)

	// Ten sessions per user, as in the 10,000-session scenario (the gateway's per-user limit).
	res, err = runFanout(ad, compareOpts{members: 10, perUser: 10, rate: 5, duration: 2 * time.Second, drainWait: 30 * time.Second, warmup: 2, settle: 10 * time.Second, parallel: 8, pids: []int{pid}, ping: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	checkFanout(t, res, 100)

	// A group over im-logic's limit is refused with the reason, not measured.
	if _, err := runFanout(ad, compareOpts{members: 60, perUser: 1, rate: 5, duration: time.Second, drainWait: time.Second, parallel: 8, pids: []int{pid}}); err == nil ||
		!strings.Contains(err.Error(), "at most 50 members") {
		t.Fatalf("a 61-member group: %v", err)
	}
}
