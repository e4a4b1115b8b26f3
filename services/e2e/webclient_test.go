package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"

	"github.com/gochat/gochat/services/internal/clientapi"
	tc "github.com/gochat/gochat/services/testcluster"
)

// TestWebClient drives the web client the way people use it, at a desktop
// and at a phone viewport, and asserts each thing issue 9 found broken or
// missing. A screenshot of every step is kept in $GOCHAT_TEST_ARTIFACTS.
func TestWebClient(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is required for the browser test (apt-get install chromium; .ci/run installs it)")
	}
	_, base := startDev(t, t.TempDir())
	for _, vp := range []viewport{{"desktop", 1280, 800, false}, {"mobile", 390, 844, true}} {
		t.Run(vp.name, func(t *testing.T) { testWebClient(t, chromium, base, vp) })
	}
}

type viewport struct {
	name          string
	width, height int
	mobile        bool
}

// tab is one browser tab driven by the test.
type tab struct {
	t    *testing.T
	ctx  context.Context
	who  string
	vp   viewport
	step *int
}

func (p *tab) shot(what string) {
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		p.t.Logf("screenshot %s: %v", what, err)
		return
	}
	*p.step++
	name := fmt.Sprintf("webclient-%s-%02d-%s-%s.png", p.vp.name, *p.step, p.who, strings.NewReplacer(" ", "-", "/", "-").Replace(what))
	if err := os.WriteFile(filepath.Join(artifactsDir(p.t), name), png, 0o644); err != nil {
		p.t.Logf("save screenshot: %v", err)
	}
}

// do runs a step and keeps a screenshot of what it left on screen.
func (p *tab) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 40*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.shot("FAILED-" + what)
		p.t.Fatalf("%s %s: %v", p.who, what, err)
	}
	p.shot(what)
}

func evalJS[T any](p *tab, expr string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 60*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		p.shot("FAILED-eval")
		p.t.Fatalf("%s: evaluate %s: %v", p.who, expr, err)
	}
	return v
}

// waitJS waits until a JavaScript expression is true.
func waitJS(expr string) chromedp.Action[chromedp.Void] {
	poll := chromedp.Poll[bool](expr, chromedp.WithPollingInterval(100*time.Millisecond))
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := poll(ctx, t)
		return err
	})
}

// setComposer types a value the way a paste would: value plus an input event.
func setComposer(v string) chromedp.Action[chromedp.Void] {
	b, _ := json.Marshal(v)
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Evaluate[any](fmt.Sprintf(`(() => { const e = document.getElementById("composer-text"); e.value = %s; e.dispatchEvent(new Event("input")); return true; })()`, b))(ctx, t)
		return err
	})
}

// pressEnter presses Enter (with Shift) as a keyboard does: one keydown that
// carries the text, so that a handler that prevents it also prevents the new
// line (chromedp.KeyEvent sends the text as a separate char event).
func pressEnter(shift bool) chromedp.Action[chromedp.Void] {
	var mod int64
	if shift {
		mod = 8 // Shift, in the DevTools protocol's bit field
	}
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		down := input.DispatchKeyEventParams{Type: input.DispatchKeyEventTypeKeyDown, Key: "Enter", Code: "Enter", WindowsVirtualKeyCode: 13, NativeVirtualKeyCode: 13, Text: "\r", UnmodifiedText: "\r", Modifiers: mod}
		if _, err := cdp.Call(ctx, t, input.DispatchKeyEvent, down); err != nil {
			return err
		}
		up := input.DispatchKeyEventParams{Type: input.DispatchKeyEventTypeKeyUp, Key: "Enter", Code: "Enter", WindowsVirtualKeyCode: 13, NativeVirtualKeyCode: 13, Modifiers: mod}
		_, err := cdp.Call(ctx, t, input.DispatchKeyEvent, up)
		return err
	})
}

const noHorizontalScroll = `document.documentElement.scrollWidth === window.innerWidth && document.body.scrollWidth <= window.innerWidth`

func testWebClient(t *testing.T, chromium, base string, vp viewport) {
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true), chromedp.WindowSize(vp.width, vp.height),
		chromedp.UserDataDir(t.TempDir()))
	defer cancelAlloc()
	step := 0
	newPage := func(parent context.Context, who string, opts ...chromedp.ContextOption) *tab {
		ctx, cancel := chromedp.NewContext(parent, opts...)
		t.Cleanup(cancel)
		if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
			t.Fatalf("open a tab for %s: %v", who, err)
		}
		p := &tab{t: t, ctx: ctx, who: who, vp: vp, step: &step}
		if err := chromedp.Do(ctx, chromedp.EmulateViewport(int64(vp.width), int64(vp.height))); err != nil {
			t.Fatalf("set the viewport: %v", err)
		}
		return p
	}
	// Each person has a browser of their own (a browser context).
	a := newPage(allocCtx, "alice")
	b := newPage(a.ctx, "bob", chromedp.WithNewBrowserContext())

	aliceName, bobName, carolName := uniq("alice"), uniq("bob"), uniq("carol")
	bob := tc.Register(t, base, bobName)
	carol := tc.Register(t, base, carolName)
	upper := func(s string) string { return strings.ToUpper(s[:1]) + s[1:] }

	// Sign-up with a capitalised username (what a phone keyboard types) works,
	// and the account is the lower-case name.
	a.do("sign up capitalised",
		chromedp.Navigate(base),
		chromedp.WaitVisible(chromedp.ID("tab-signup")),
		waitJS(`document.getElementById("signup-username").getAttribute("autocapitalize") === "none"`),
		chromedp.Click(chromedp.ID("tab-signup")),
		chromedp.SendKeys(chromedp.ID("signup-username"), upper(aliceName)),
		chromedp.SendKeys(chromedp.ID("signup-password"), "password-"+aliceName),
		chromedp.SendKeys(chromedp.ID("signup-nickname"), "Alice"),
		chromedp.Click(chromedp.ID("btn-register")),
		waitText("#status", "Connected"),
		waitText("#me-name", "@"+aliceName),
	)
	// Enter on the sign-in form signs in, with any case.
	b.do("sign in with Enter",
		chromedp.Navigate(base),
		chromedp.WaitVisible(chromedp.ID("signin-username")),
		chromedp.SendKeys(chromedp.ID("signin-username"), strings.ToUpper(bobName)),
		chromedp.SendKeys(chromedp.ID("signin-password"), "password-"+bobName+"\r"),
		waitText("#status", "Connected"),
		waitText("#me-name", "@"+bobName),
	)
	var aliceID string
	{
		var u clientapi.User
		bob.Must(t, "GET", "/v1/users?username="+upper(aliceName), nil, &u)
		aliceID = u.ID
	}
	// The bulk sender fills a group with 5,000 messages while the rest runs.
	bulkDone := make(chan string, 1)
	go func() { bulkDone <- fillBulkGroup(t, base, aliceID, 5000) }()

	if vp.mobile {
		a.do("mobile starts on the list", waitJS(`getComputedStyle(document.querySelector(".chat")).display === "none" && getComputedStyle(document.querySelector(".sidebar")).display !== "none"`))
	}
	a.do("open a direct chat by capitalised username",
		chromedp.SendKeys(chromedp.ID("direct-username"), strings.ToUpper(bobName)),
		chromedp.Click(chromedp.ID("btn-direct")),
		chromedp.WaitVisible(chromedp.ID("composer")),
		waitText("#chat-title", bobName),
	)
	if vp.mobile {
		a.do("mobile chat screen has the whole screen and a back button",
			waitJS(`getComputedStyle(document.querySelector(".sidebar")).display === "none" && document.getElementById("btn-back").offsetWidth > 0 && document.querySelector(".chat").offsetWidth === window.innerWidth`))
	}
	a.do("presence: bob is online", waitText("#chat-sub", "online"))

	// One unbroken 4,096-character word and a 64-character hash wrap; the page never widens.
	hash := strings.Repeat("0123456789abcdef", 4)
	a.do("send a 4096-character word",
		setComposer(strings.Repeat("x", 4096)),
		chromedp.Click(chromedp.ID("btn-send")),
		waitJS(`[...document.querySelectorAll("#message-list .msg:not(.pending) .body")].some((e) => e.textContent.length === 4096)`),
		setComposer(hash), chromedp.Click(chromedp.ID("btn-send")),
		waitText("#message-list", hash),
		waitJS(noHorizontalScroll),
	)
	openConv(b, "@"+aliceName)
	b.do("bob's page does not widen either", waitText("#message-list", hash), waitJS(noHorizontalScroll))

	// Typing reaches the other member, and is shown for a few seconds.
	// The server relays at most one typing frame per second per
	// conversation and connection, and setting the draft above sent one:
	// the new one must come after that second, or it is (rightly) dropped.
	a.do("alice types", chromedp.Sleep(1100*time.Millisecond), chromedp.SendKeys(chromedp.ID("composer-text"), "typing"))
	b.do("bob sees alice typing", waitText("#chat-sub", "typing"))
	a.do("alice clears the draft", setComposer(""))

	// Shift+Enter adds a line, Enter sends, and the line break survives.
	a.do("Shift+Enter adds a new line",
		chromedp.SendKeys(chromedp.ID("composer-text"), "line one"),
		pressEnter(true),
		chromedp.SendKeys(chromedp.ID("composer-text"), "line two"),
		waitJS(`document.getElementById("composer-text").value === "line one\nline two"`),
		waitJS(`!document.querySelector("#message-list .pending")`),
		pressEnter(false),
		waitJS(`document.getElementById("composer-text").value === ""`),
	)
	b.do("bob gets both lines", waitJS(`[...document.querySelectorAll("#message-list .body")].some((e) => e.innerText === "line one\nline two")`))

	// Over 4,096 bytes (2,049 two-byte characters: under the old character
	// limit) is refused before sending, inline, and the draft survives.
	big := strings.Repeat("é", 2049)
	a.do("oversized draft is kept",
		setComposer(big),
		pressEnter(false),
		waitText("#composer-error", "Too long"),
		waitJS(`document.getElementById("composer-count").classList.contains("over")`),
		waitJS(fmt.Sprintf(`document.getElementById("composer-text").value.length === %d && !document.querySelector("#message-list .pending")`, 2049)),
	)
	a.do("the error clears once the draft fits",
		setComposer(strings.Repeat("é", 2000)),
		waitJS(`document.getElementById("composer-error").textContent === ""`),
		chromedp.Click(chromedp.ID("btn-send")),
		waitJS(`[...document.querySelectorAll("#message-list .msg:not(.pending) .body")].some((e) => e.textContent.length === 2000)`),
	)

	// Presence: bob leaves (his last session ends) and comes back.
	b.do("bob closes the page", chromedp.Navigate("about:blank"))
	a.do("alice sees bob last seen", waitText("#chat-sub", "last seen"))
	b.do("bob comes back still signed in", chromedp.Navigate(base), waitText("#status", "Connected"))
	a.do("alice sees bob online again", waitJS(`document.getElementById("chat-sub").textContent === "online"`))

	// Group receipts count readers; membership changes leave a line.
	if vp.mobile {
		a.do("back to the list", chromedp.Click(chromedp.ID("btn-back")))
	}
	a.do("alice creates a group",
		chromedp.SendKeys(chromedp.ID("group-name"), "team"),
		chromedp.SendKeys(chromedp.ID("group-members"), upper(bobName)+", "+carolName),
		chromedp.Click(chromedp.ID("btn-group")),
		waitText("#chat-title", "team"),
		chromedp.SendKeys(chromedp.ID("composer-text"), "hello team\r"),
		waitJS(`[...document.querySelectorAll("#message-list .mine .receipt")].pop()?.textContent === "✓ Sent"`),
	)
	openConv(b, "team")
	a.do("receipt: read by 1 of 2", waitJS(`[...document.querySelectorAll("#message-list .mine .receipt")].pop()?.textContent === "Read by 1 of 2"`))
	groupID := evalJS[string](a, `state.current`)
	seq := evalJS[float64](a, `state.convs.get(state.current).max_seq`)
	carol.Must(t, "POST", "/v1/conversations/"+groupID+"/read", map[string]any{"seq": int64(seq)}, nil)
	a.do("receipt: read by 2 of 2", waitJS(`[...document.querySelectorAll("#message-list .mine .receipt")].pop()?.textContent === "Read by 2 of 2"`))
	a.do("remove carol, confirmed",
		chromedp.Click(chromedp.ID("btn-members")),
		chromedp.WaitVisible(chromedp.Search(fmt.Sprintf(`//button[@aria-label="Remove %s from the group"]`, carolName))),
		chromedp.Click(chromedp.Search(fmt.Sprintf(`//button[@aria-label="Remove %s from the group"]`, carolName))),
		chromedp.WaitVisible(chromedp.ID("confirm-ok")),
		chromedp.Click(chromedp.ID("confirm-ok")),
		waitText("#message-list", "You removed "+carolName),
	)
	b.do("bob sees the membership line", waitText("#message-list", "removed "+carolName))
	testAccessibility(a)

	// Scroll-back keeps the reader's place, and the page holds 5,000 messages.
	bulkID := <-bulkDone
	if t.Failed() {
		return
	}
	a.do("reload: still signed in, unread in the title",
		chromedp.Navigate(base), waitText("#status", "Connected"),
		waitJS(`/^\(\d+\) GoChat$/.test(document.title) && !!document.querySelector("#conversations li.unread")`))
	a.do("reload reopens the last chat", waitText("#chat-title", "team"), waitJS(`document.body.dataset.screen === "chat"`),
		waitJS(`document.getElementById("composer-text").offsetHeight >= 30`))
	openConv(a, "bulk")
	a.do("the bulk group's newest page", waitText("#chat-title", "bulk"),
		waitJS(`state.cs.get(state.current).msgs.size >= 100 && state.cs.get(state.current).loadingOlder === false`))
	testScrollBack(a)
	testRenderBudget(t, a, base, bulkID)

	// A new tab of the same browser is signed in and reopens the last chat.
	a2 := newPage(a.ctx, "alice-tab2")
	a2.do("a new tab is signed in", chromedp.Navigate(base), waitText("#status", "Connected"), waitText("#me-name", "@"+aliceName))
	if !vp.mobile {
		a2.do("and reopens the last chat", waitText("#chat-title", "bulk"))
	}

	g := newPage(a.ctx, "guest", chromedp.WithNewBrowserContext())
	g.do("guest logout asks first",
		chromedp.Navigate(base), chromedp.WaitVisible(chromedp.ID("btn-guest")), chromedp.Click(chromedp.ID("btn-guest")),
		waitText("#status", "Connected"),
		chromedp.Click(chromedp.ID("btn-logout")),
		chromedp.WaitVisible(chromedp.ID("confirm")),
		waitText("#confirm-text", "guest"),
	)
	g.do("cancel keeps the guest", chromedp.Click(chromedp.ID("confirm-cancel")), chromedp.WaitNotVisible(chromedp.ID("confirm")),
		waitJS(`!document.getElementById("app").hidden`))
}

// openConv opens the conversation whose list entry contains text (from the
// list screen on a phone).
func openConv(p *tab, text string) {
	p.t.Helper()
	back := chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Evaluate[any](`(() => { if (document.body.dataset.screen === "chat" && matchMedia("(max-width: 700px)").matches) document.getElementById("btn-back").click(); return true; })()`)(ctx, t)
		return err
	})
	p.do("open "+text, back,
		waitText("#conversations", text),
		chromedp.Click(chromedp.Search(fmt.Sprintf(`//ul[@id="conversations"]/li[contains(., %q)]/button`, text))),
		chromedp.WaitVisible(chromedp.ID("composer")),
	)
}

// fillBulkGroup has ten users send n messages to a group with alice, in
// parallel over HTTP (each within its send rate), and returns the group id.
func fillBulkGroup(t *testing.T, base, aliceID string, n int) string {
	const senders = 10
	var users []*tc.API
	var ids []string
	for i := 0; i < senders; i++ {
		u := tc.Register(t, base, uniq("bulk"))
		users = append(users, u)
		ids = append(ids, u.User.ID)
	}
	var conv clientapi.Conversation
	users[0].Must(t, "POST", "/v1/groups", map[string]any{"name": "bulk", "member_ids": append(ids[1:], aliceID)}, &conv)
	var wg sync.WaitGroup
	for i, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Second / 40) // under the 50/s per-user HTTP send rate
			defer tick.Stop()
			for j := i; j < n; j += senders {
				<-tick.C
				body := map[string]any{"client_msg_id": fmt.Sprintf("bulk-%d", j), "content": fmt.Sprintf("bulk message %d from %s", j, u.User.Username)}
				if _, err := u.Do("POST", "/v1/conversations/"+conv.ID+"/messages", body, nil); err != nil {
					t.Errorf("bulk send %d: %v", j, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return conv.ID
}

// testScrollBack scrolls to the top of a conversation whose older history is
// not loaded yet: the message that was first on screen must stay where it
// was while the older page is inserted above it.
func testScrollBack(a *tab) {
	a.t.Helper()
	type probe struct {
		Seq    float64 `json:"seq"`
		Offset float64 `json:"offset"`
		Size   float64 `json:"size"`
	}
	const measure = `(() => { const box = document.getElementById("messages"); const el = firstVisible();
		return {seq: +el.dataset.seq, offset: el.getBoundingClientRect().top - box.getBoundingClientRect().top, size: state.cs.get(state.current).msgs.size}; })()`
	before := evalJS[probe](a, `(() => { document.getElementById("messages").scrollTop = 0; return `+measure+`; })()`)
	a.do("scroll to the top loads older", waitJS(fmt.Sprintf(`state.cs.get(state.current).msgs.size > %d && !state.cs.get(state.current).loadingOlder`, int(before.Size))))
	after := evalJS[probe](a, fmt.Sprintf(`(() => { const box = document.getElementById("messages"); const el = document.querySelector('#message-list [data-seq="%d"]');
		return {seq: %d, offset: el.getBoundingClientRect().top - box.getBoundingClientRect().top, size: state.cs.get(state.current).msgs.size}; })()`, int(before.Seq), int(before.Seq)))
	if d := after.Offset - before.Offset; d > 2 || d < -2 {
		a.t.Errorf("scroll-back moved the first visible message (seq %v) by %.1f px (from %.1f to %.1f), loaded %v -> %v",
			before.Seq, d, before.Offset, after.Offset, before.Size, after.Size)
	}
	// Wheel-ups keep loading: scrolling to the top again loads another page.
	second := evalJS[probe](a, `(() => { document.getElementById("messages").scrollTop = 0; return `+measure+`; })()`)
	a.do("scrolling up again loads more", waitJS(fmt.Sprintf(`state.cs.get(state.current).msgs.size > %d && !state.cs.get(state.current).loadingOlder`, int(second.Size))))
}

// testRenderBudget loads the whole 5,000-message history into the page, then
// has messages arrive one at a time and reads the client's own Performance
// API measures of each ("gochat:message": handling the frame, DOM update and
// the layout it causes). It asserts that messages are rendered
// incrementally (existing nodes are kept, one node is added per message)
// and reports the timings; timings themselves are not asserted.
func testRenderBudget(t *testing.T, a *tab, base, convID string) {
	t.Helper()
	loaded := evalJS[float64](a, `(async () => { const s = state.cs.get(state.current);
		while (s.hasOlder) { await loadOlder(); }
		scrollToBottom(); return s.msgs.size; })()`)
	if loaded < 5000 {
		t.Fatalf("the page holds %v messages, want 5000", loaded)
	}
	a.shot("5000 messages loaded")
	evalJS[bool](a, `(() => { performance.clearMeasures("gochat:message");
		window.firstNode = document.querySelector("#message-list [data-seq]");
		window.nodesAdded = 0;
		new MutationObserver((ms) => { for (const m of ms) window.nodesAdded += m.addedNodes.length; }).observe(document.getElementById("message-list"), {childList: true, subtree: true});
		return true; })()`)
	const n = 30
	w := tc.DialWS(t, strings.Replace(base, "http://", "ws://", 1)+"/v1/ws", bulkToken(t, a, base))
	for i := 0; i < n; i++ {
		if err := w.Send("send", map[string]any{"client_msg_id": fmt.Sprintf("late-%d", i), "conversation_id": convID, "content": fmt.Sprintf("late message %d", i)}); err != nil {
			t.Fatal(err)
		}
		w.Next(t, "ack", wait)
		time.Sleep(100 * time.Millisecond)
	}
	a.do("30 more messages arrive", waitJS(fmt.Sprintf(`state.cs.get(state.current).msgs.size >= %d`, int(loaded)+n)))
	type result struct {
		Durations []float64 `json:"durations"`
		Same      bool      `json:"same"`
		Added     float64   `json:"added"`
		Nodes     float64   `json:"nodes"`
	}
	got := evalJS[result](a, `({durations: performance.getEntriesByName("gochat:message").map((e) => e.duration),
		same: window.firstNode === document.querySelector("#message-list [data-seq]") && window.firstNode.isConnected,
		added: window.nodesAdded, nodes: document.querySelectorAll("#message-list [data-seq]").length})`)
	if !got.Same {
		t.Errorf("the list was rebuilt: the first message node was replaced while messages arrived")
	}
	if got.Added < n || got.Added > 2*n {
		t.Errorf("%v nodes were added to the list for %d incoming messages, want one (or two with a divider) per message", got.Added, n)
	}
	if len(got.Durations) < n {
		t.Fatalf("%d render measures for %d messages", len(got.Durations), n)
	}
	sort.Float64s(got.Durations)
	d := got.Durations
	t.Logf("%s: render time per incoming message with %v messages in the list: median %.2f ms, p90 %.2f ms, max %.2f ms (budget 16 ms; %d samples)",
		a.vp.name, got.Nodes, d[len(d)/2], d[len(d)*9/10], d[len(d)-1], len(d))
}

// bulkToken signs in as a member of the open bulk group other than alice:
// the sender of the last message, whose password the test knows.
func bulkToken(t *testing.T, a *tab, base string) string {
	t.Helper()
	name := evalJS[string](a, `(() => { const c = state.convs.get(state.current); const m = c.last_message; return state.users.get(m.sender_id).username; })()`)
	api := &tc.API{Base: base}
	var r struct {
		Token string `json:"token"`
	}
	api.Must(t, "POST", "/v1/auth/login", map[string]string{"username": name, "password": "password-" + name}, &r)
	return r.Token
}

// testAccessibility checks the basics a screen-reader or keyboard user needs.
func testAccessibility(a *tab) {
	a.t.Helper()
	checks := []struct{ what, expr string }{
		{"every input has a label", `[...document.querySelectorAll("input, textarea")].every((e) => e.labels.length > 0 || e.getAttribute("aria-label"))`},
		{"conversations are keyboard-reachable buttons", `[...document.querySelectorAll("#conversations li")].every((li) => li.firstElementChild.tagName === "BUTTON")`},
		{"status and new messages are live regions", `document.getElementById("status").getAttribute("aria-live") === "polite" && document.getElementById("announcer").getAttribute("aria-live") === "polite"`},
		{"the favicon is served", `(async () => (await fetch(document.querySelector("link[rel=icon]").href)).status === 200)()`},
		{"read receipts have contrast of at least 4.5:1", `(() => {
			const el = document.querySelector("#message-list .mine .receipt"); if (!el) return false;
			const rgb = (s) => s.match(/\d+(\.\d+)?/g).slice(0, 3).map(Number);
			const lum = (c) => { const [r, g, b] = c.map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; }); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
			const fg = lum(rgb(getComputedStyle(el).color)), bg = lum(rgb(getComputedStyle(el.closest(".bubble")).backgroundColor));
			return (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05) >= 4.5; })()`},
	}
	for _, c := range checks {
		if !evalJS[bool](a, c.expr) {
			a.t.Errorf("accessibility: %s: no", c.what)
		}
	}
	a.shot("accessibility checked")
}
