package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/api/pki"
	tc "github.com/gochat/gochat/services/testcluster"
)

// startDev runs `gochat dev` as a process on a data dir and waits until it serves.
func startDev(t *testing.T, dataDir string, extra ...string) (*tc.Process, string) {
	t.Helper()
	addr := tc.FreePort(t)
	args := append([]string{"dev", "--data-dir", dataDir, "--http-addr", addr, "--metrics-addr", tc.FreePort(t)}, extra...)
	p := tc.Start(t, "gochat-dev", nil, args...)
	tc.WaitHTTP(t, "http://"+addr+"/readyz", p)
	return p, "http://" + addr
}

func artifactsDir(t *testing.T) string {
	if d := os.Getenv("GOCHAT_TEST_ARTIFACTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

// TestBrowser has two people chat in headless Chromium through the web client
// that `gochat dev` serves.
func TestBrowser(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is required for the browser test (apt-get install chromium; .ci/run installs it)")
	}
	adminAddr := tc.FreePort(t)
	dataDir := t.TempDir()
	dev, base := startDev(t, dataDir, "--gateway-grpc-addr", adminAddr)

	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true), chromedp.WindowSize(1100, 750),
		chromedp.UserDataDir(t.TempDir()))
	defer cancelAlloc()
	// The first Run on a context starts the browser (or tab): never under a
	// timeout. Each person has a browser context of their own (a login is
	// shared by the tabs of one browser, as it is for a real person).
	pageA, cancelA := chromedp.NewContext(allocCtx)
	defer cancelA()
	if err := chromedp.Do(pageA, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	pageB, cancelB := chromedp.NewContext(pageA, chromedp.WithNewBrowserContext())
	defer cancelB()
	if err := chromedp.Do(pageB, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("open a second tab: %v", err)
	}

	run := func(page context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		ctx, cancel := context.WithTimeout(page, 30*time.Second)
		defer cancel()
		if err := chromedp.Do(ctx, actions...); err != nil {
			shot(t, page, "failed-"+what)
			t.Fatalf("%s: %v", what, err)
		}
	}
	alice, bob := uniq("alice"), uniq("bob")
	register := func(page context.Context, name string) {
		run(page, "register "+name,
			chromedp.Navigate(base),
			chromedp.WaitVisible(chromedp.ID("tab-signup")),
			chromedp.Click(chromedp.ID("tab-signup")),
			chromedp.SendKeys(chromedp.ID("signup-username"), name),
			chromedp.SendKeys(chromedp.ID("signup-password"), "password-"+name),
			chromedp.Click(chromedp.ID("btn-register")),
			chromedp.WaitVisible(chromedp.ID("app")),
			waitText("#status", "Connected"),
		)
	}
	register(pageA, alice)
	register(pageB, bob)

	run(pageA, "alice opens a chat with bob",
		chromedp.SendKeys(chromedp.ID("direct-username"), bob),
		chromedp.Click(chromedp.ID("btn-direct")),
		chromedp.WaitVisible(chromedp.ID("composer")),
		chromedp.SendKeys(chromedp.ID("composer-text"), "hello bob"),
		chromedp.Click(chromedp.ID("btn-send")),
		waitText("#message-list", "hello bob"),
	)
	run(pageB, "bob sees it and answers",
		waitText("#conversations", "hello bob"),
		chromedp.Click(chromedp.CSS("#conversations li")),
		waitText("#message-list", "hello bob"),
		chromedp.SendKeys(chromedp.ID("composer-text"), "hi alice"),
		chromedp.Click(chromedp.ID("btn-send")),
	)
	run(pageA, "alice gets the answer and bob's read receipt",
		waitText("#message-list", "hi alice"),
		waitText("#message-list", "Read"),
	)
	run(pageA, "alice creates a group with bob and writes to it",
		chromedp.SendKeys(chromedp.ID("group-name"), "team"),
		chromedp.SendKeys(chromedp.ID("group-members"), bob),
		chromedp.Click(chromedp.ID("btn-group")),
		waitText("#chat-title", "team"),
		chromedp.SendKeys(chromedp.ID("composer-text"), "hello team"),
		chromedp.Click(chromedp.ID("btn-send")),
		waitText("#message-list", "hello team"),
	)
	run(pageB, "bob sees the group message",
		waitText("#conversations", "hello team"),
		chromedp.Click(chromedp.Search(`//ul[@id="conversations"]/li[contains(., "team")]`)),
		waitText("#chat-title", "team"),
		waitText("#message-list", "hello team"),
	)
	shot(t, pageA, "alice")
	shot(t, pageB, "bob")

	drainMidConversation(t, dev, dataDir, adminAddr, pageA, pageB, run)

	// The server goes away: both pages show that they are reconnecting, and
	// once it is back they reconnect by themselves and catch up.
	dev.Stop()
	run(pageB, "bob sees the connection drop", waitText("#status", "Reconnecting"))
	shot(t, pageB, "reconnecting")
	dev.Restart()
	run(pageA, "alice reconnects and writes", waitText("#status", "Connected"),
		chromedp.SendKeys(chromedp.ID("composer-text"), "after the restart"),
		chromedp.Click(chromedp.ID("btn-send")),
		waitText("#message-list", "after the restart"))
	run(pageB, "bob reconnects and gets it", waitText("#status", "Connected"), waitText("#message-list", "after the restart"))
}

// drainMidConversation drains the gateway through its admin gRPC while alice
// keeps writing to bob, then replaces it (a restart, as a roll would), and
// alice writes on: bob's page must hold every message, counted by unique
// seq, with no gap.
func drainMidConversation(t *testing.T, dev *tc.Process, dataDir, adminAddr string, pageA, pageB context.Context, run func(context.Context, string, ...chromedp.Action[chromedp.Void])) {
	t.Helper()
	run(pageA, "alice back in the direct chat", chromedp.Click(chromedp.Search(`//ul[@id="conversations"]/li[contains(., "hi alice")]`)), waitText("#message-list", "hi alice"))
	run(pageB, "bob back in the direct chat", chromedp.Click(chromedp.Search(`//ul[@id="conversations"]/li[contains(., "hi alice")]`)), waitText("#message-list", "hi alice"))
	// An admin credential from the dev mode's own CA (gochat issue-cert
	// does the same from the command line).
	ca := tc.ReadCA(t, filepath.Join(dataDir, "tls", "ca.crt"), filepath.Join(dataDir, "tls", "ca.key"))
	admin := gochatv1.NewGatewayAdminServiceClient(tc.DialAs(t, ca, adminAddr, pki.Admin, pki.Gateway))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := admin.Drain(ctx, &gochatv1.DrainRequest{WindowMs: 3000, TimeoutMs: 8000}); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	say := func(text string) {
		run(pageA, "alice writes "+text,
			chromedp.SendKeys(chromedp.ID("composer-text"), text),
			chromedp.Click(chromedp.ID("btn-send")),
			chromedp.Sleep(300*time.Millisecond))
	}
	var want []string
	for i := 1; i <= 6; i++ { // over the 3s window and past it
		want = append(want, fmt.Sprintf("during drain %d", i))
		say(want[len(want)-1])
	}
	for {
		st, err := admin.Stats(ctx, &gochatv1.StatsRequest{})
		if err != nil {
			t.Fatalf("Stats: %v", err)
		}
		if st.Sessions == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The drained gateway is replaced, and alice goes on right away.
	dev.Restart()
	for i := 1; i <= 3; i++ {
		want = append(want, fmt.Sprintf("after drain %d", i))
		say(want[len(want)-1])
	}
	run(pageB, "bob holds everything alice wrote", waitText("#status", "Connected"), waitText("#message-list", want[len(want)-1]))
	type shown struct {
		Seq  string `json:"seq"`
		Text string `json:"text"`
	}
	evalCtx, cancelEval := context.WithTimeout(pageB, 10*time.Second)
	defer cancelEval()
	got, err := chromedp.Run(evalCtx, chromedp.Evaluate[[]shown](`[...document.querySelectorAll("#message-list .msg[data-seq]")].map(el => ({seq: el.dataset.seq, text: el.querySelector(".body").textContent}))`))
	if err != nil {
		t.Fatalf("read bob's messages: %v", err)
	}
	seqs := map[string]bool{}
	texts := map[string]int{}
	for _, m := range got {
		if seqs[m.Seq] {
			t.Fatalf("seq %s shown twice: %+v", m.Seq, got)
		}
		seqs[m.Seq] = true
		texts[m.Text]++
	}
	for i := 1; i <= len(got); i++ {
		if !seqs[fmt.Sprint(i)] {
			t.Fatalf("seq %d missing from bob's page: %+v", i, got)
		}
	}
	for _, w := range want {
		if texts[w] != 1 {
			t.Fatalf("%q appears %d times on bob's page: %+v", w, texts[w], got)
		}
	}
	// In the order alice typed them: the ones typed while she was offline
	// are resent before any typed once she is back.
	bySeq := make([]string, len(got)+1)
	for _, m := range got {
		n, _ := strconv.Atoi(m.Seq)
		bySeq[n] = m.Text
	}
	var order []string
	for _, text := range bySeq {
		if slices.Contains(want, text) {
			order = append(order, text)
		}
	}
	if !slices.Equal(order, want) {
		t.Fatalf("alice's messages on bob's page in seq order: %q, want %q", order, want)
	}
	shot(t, pageB, "after-drain")
}

// waitText waits until the element's text contains s.
func waitText(sel, s string) chromedp.Action[chromedp.Void] {
	poll := chromedp.Poll[bool](fmt.Sprintf(`(document.querySelector(%q)?.innerText ?? "").includes(%q)`, sel, s), chromedp.WithPollingInterval(100*time.Millisecond))
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := poll(ctx, t)
		return err
	})
}

func shot(t *testing.T, page context.Context, name string) {
	ctx, cancel := context.WithTimeout(page, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Logf("screenshot %s: %v", name, err)
		return
	}
	path := filepath.Join(artifactsDir(t), "browser-"+name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Logf("save screenshot: %v", err)
		return
	}
	t.Logf("screenshot: %s", path)
}
