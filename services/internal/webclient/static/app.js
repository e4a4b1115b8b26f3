// GoChat web client: plain JavaScript over the public client API
// (docs/protocol.md), including the v1.1 additions (presence, typing, resync,
// size-bounded answers).
//
// The session: a login is kept in localStorage, so a new tab starts signed in
// as the last account that logged in; each tab also keeps its own copy in
// sessionStorage, so a tab that is reloaded stays the account it was (two
// tabs can still be two different users).
//
// Rendering is incremental: each message is one <li>, created once and kept
// in a map by seq; a new message appends (or inserts) its own node and
// touches at most its neighbour, so the cost of an incoming message does not
// grow with the number of messages loaded.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_CONTENT_BYTES = 4096; // the server's default limit (docs/protocol.md)
const COUNT_FROM_BYTES = 3500;  // show the byte counter from here on
const PAGE = 100;               // history page size
const TYPING_SEND_EVERY = 3000; // the server relays at most one per second
const TYPING_SHOW_MS = 5000;    // the contract: show a typing frame for about 5 s
const GROUP_WINDOW_MS = 5 * 60 * 1000;
const OFFLINE = "You're offline — will retry";

const state = {
  token: sessionStorage.getItem("gochat.token") || localStorage.getItem("gochat.token"),
  me: null,
  convs: new Map(),    // id -> Conversation
  cs: new Map(),       // id -> per-conversation client state, see convState
  users: new Map(),    // id -> User (with presence when known)
  userReq: new Map(),  // id -> Promise<User> in flight
  presence: new Map(), // user id -> {online, last_seen_at}
  current: null,
  ws: null,
  backoff: 500,
  heartbeatMs: 25000,
  lastFrame: 0,
  timers: {},
};

function convState(id) {
  let s = state.cs.get(id);
  if (!s) {
    s = {
      msgs: new Map(),     // seq -> Message
      held: 0,             // highest seq held with nothing missing below it (down to oldest)
      oldest: 0,           // lowest seq held (0: none)
      hasOlder: null,      // null: history never fetched
      loadingOlder: false,
      sys: [],             // membership lines: {after: seq, text}
      typing: new Map(),   // user id -> expiry (ms)
      draft: "",
      divider: 0,          // seq the "new messages" divider stands before (0: none)
      removed: null,       // text of the notice when the user was removed
      typingSent: 0,
    };
    state.cs.set(id, s);
  }
  return s;
}

// ---- HTTP -------------------------------------------------------------

class APIError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new APIError(0, "unavailable", OFFLINE); // fetch rejects only when the network is down
  }
  if (resp.status === 204) return null;
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const e = data.error || { code: "internal", message: resp.statusText };
    if (resp.status === 401 && !path.startsWith("/v1/auth/")) signedOut();
    throw new APIError(resp.status, e.code, e.message);
  }
  return data;
}

function user(id) {
  if (state.users.has(id)) return Promise.resolve(state.users.get(id));
  if (state.userReq.has(id)) return state.userReq.get(id);
  const p = api("GET", "/v1/users/" + encodeURIComponent(id)).then((u) => {
    state.users.set(id, u);
    if ("online" in u) state.presence.set(id, { online: u.online, last_seen_at: u.last_seen_at });
    return u;
  }).catch(() => ({ id, username: id.slice(0, 6), nickname: "unknown" })).finally(() => state.userReq.delete(id));
  state.userReq.set(id, p);
  return p;
}
const knownName = (id) => { const u = state.users.get(id); return u ? u.nickname : "…"; };
const normalName = (s) => s.trim().toLowerCase();
const userByName = (name) => api("GET", "/v1/users?username=" + encodeURIComponent(normalName(name)));

// ---- auth -------------------------------------------------------------

function showError(el, err) { $(el).textContent = err ? (err.message || String(err)) : ""; }

function saveToken(token) {
  state.token = token;
  sessionStorage.setItem("gochat.token", token);
  localStorage.setItem("gochat.token", token);
}

async function authenticate(path, body) {
  showError("auth-error", null);
  try {
    const r = await api("POST", path, body);
    saveToken(r.token);
    await start();
  } catch (e) {
    showError("auth-error", e.code === "already_exists" ? "That username is taken; pick another, or sign in." : e);
  }
}

function authMode(signup) {
  $("tab-signin").setAttribute("aria-selected", String(!signup));
  $("tab-signup").setAttribute("aria-selected", String(signup));
  $("signin-form").hidden = signup;
  $("signup-form").hidden = !signup;
  showError("auth-error", null);
  $(signup ? "signup-username" : "signin-username").focus();
}
$("tab-signin").addEventListener("click", () => authMode(false));
$("tab-signup").addEventListener("click", () => authMode(true));
$("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  authenticate("/v1/auth/login", { username: normalName($("signin-username").value), password: $("signin-password").value });
});
$("signup-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  authenticate("/v1/auth/register", {
    username: normalName($("signup-username").value), password: $("signup-password").value, nickname: $("signup-nickname").value.trim(),
  });
});
$("btn-guest").addEventListener("click", () => authenticate("/v1/auth/guest", {}));
$("btn-logout").addEventListener("click", async () => {
  if (state.me && state.me.guest && !(await confirmDialog(
    "You are using a guest account. It has no password: once you log out, you cannot get back into it or its conversations.",
    "Log out and lose it"))) return;
  signedOut();
});

function signedOut() {
  if (localStorage.getItem("gochat.token") === state.token) localStorage.removeItem("gochat.token");
  sessionStorage.removeItem("gochat.token");
  state.token = null;
  if (state.ws) { state.ws.onclose = null; state.ws.close(); state.ws = null; }
  Object.values(state.timers).forEach(clearTimeout);
  location.reload();
}

// confirmDialog asks before something that cannot be undone.
function confirmDialog(text, ok) {
  const d = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = ok;
  d.returnValue = "";
  return new Promise((resolve) => {
    d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
    d.showModal();
    $("confirm-cancel").focus();
  });
}

// ---- start --------------------------------------------------------------

async function start() {
  try { state.me = await api("GET", "/v1/me"); } catch { $("auth").hidden = false; return; }
  state.users.set(state.me.id, state.me);
  $("auth").hidden = true;
  $("app").hidden = false;
  $("me-name").textContent = state.me.nickname + (state.me.guest ? " (guest)" : " @" + state.me.username);
  try { await loadConversations(); } catch (e) { showError("side-error", e); }
  connect();
  const last = localStorage.getItem("gochat.last." + state.me.id);
  if (last && state.convs.has(last) && matchMedia("(min-width: 701px)").matches) openConversation(last);
  else if (last && state.convs.has(last) && sessionStorage.getItem("gochat.screen") === "chat") openConversation(last);
}

async function loadConversations() {
  const r = await api("GET", "/v1/conversations");
  for (const c of r.conversations) mergeConversation(c);
  renderConversations();
}

function mergeConversation(c) {
  const old = state.convs.get(c.id);
  if (old && old.last_message && (!c.last_message || c.last_message.seq < old.last_message.seq)) c.last_message = old.last_message;
  if (old) {
    c.max_seq = Math.max(c.max_seq, old.max_seq);
    c.read_seq = Math.max(c.read_seq, old.read_seq);
    for (const m of c.members) {
      const om = old.members.find((x) => x.user_id === m.user_id);
      if (om) m.read_seq = Math.max(m.read_seq || 0, om.read_seq || 0);
    }
  }
  c.unread = Math.max(0, c.max_seq - c.read_seq);
  state.convs.set(c.id, c);
  convState(c.id);
  for (const m of c.members) {
    user(m.user_id); // warm the cache for titles and names
    if ("online" in m && m.user_id !== state.me.id) state.presence.set(m.user_id, { online: m.online, last_seen_at: m.last_seen_at });
  }
}

// ---- WebSocket ----------------------------------------------------------

function setStatus(s, text) { const el = $("status"); el.dataset.state = s; el.textContent = text; }

function connect() {
  clearTimeout(state.timers.reconnect);
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  // Browsers cannot set headers on a WebSocket: the query is the only place
  // the protocol allows for the token here. Every HTTP call uses the header.
  const ws = new WebSocket(`${proto}//${location.host}/v1/ws?token=${encodeURIComponent(state.token)}`);
  state.ws = ws;
  setStatus("connecting", "Connecting…");
  ws.onmessage = (ev) => {
    state.lastFrame = Date.now();
    const t0 = performance.now();
    let f;
    try { f = JSON.parse(ev.data); } catch { return; }
    onFrame(f);
    if (f.type === "message") {
      void $("messages").scrollHeight; // include the layout this frame caused
      performance.measure("gochat:message", { start: t0, end: performance.now() });
    }
  };
  ws.onclose = () => { if (state.ws === ws) scheduleReconnect(state.backoff); };
  ws.onerror = () => ws.close();
}

function scheduleReconnect(delay, jitter = true) {
  clearTimeout(state.timers.heartbeat);
  clearTimeout(state.timers.reconnect);
  clearTimeout(state.timers.tick);
  state.ws = null;
  const wait = jitter ? Math.round(delay * (0.75 + Math.random() * 0.5)) : delay;
  let left = Math.ceil(wait / 1000);
  const show = () => setStatus("reconnecting", left > 0 ? `${OFFLINE}. Reconnecting in ${left}s…` : `${OFFLINE}. Reconnecting…`);
  show();
  const tick = () => { left -= 1; show(); if (left > 0) state.timers.tick = setTimeout(tick, 1000); };
  state.timers.tick = setTimeout(tick, 1000);
  state.timers.reconnect = setTimeout(() => { clearTimeout(state.timers.tick); connect(); }, wait);
  state.backoff = Math.min(state.backoff * 2, 15000);
  markPendingWaiting();
}

// send sends a frame on a connection the server has greeted: between the
// socket's open and the hello, a frame would overtake the resends catchUp
// makes at the hello, so it waits among them instead.
function send(type, data) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN || state.greeted !== state.ws) return false;
  state.ws.send(JSON.stringify({ type, data }));
  return true;
}

// heartbeat pings every heartbeat_ms and treats two silent periods as a dead network.
function heartbeat() {
  clearTimeout(state.timers.heartbeat);
  state.timers.heartbeat = setTimeout(() => {
    if (Date.now() - state.lastFrame > 2 * state.heartbeatMs) { if (state.ws) state.ws.close(); return; }
    send("ping", {});
    heartbeat();
  }, state.heartbeatMs);
}

const pending = new Map(); // client_msg_id -> {conversation_id, content, failed}

function onFrame(f) {
  const d = f.data || {};
  switch (f.type) {
    case "hello":
      state.greeted = state.ws;
      state.backoff = 500;
      state.heartbeatMs = Math.max(1000, Math.floor(d.heartbeat_ms * 0.8));
      setStatus("online", "Connected");
      if ($("composer-error").dataset.kind === "offline") composerError(null);
      heartbeat();
      catchUp();
      break;
    case "ack":
      onAck(d);
      break;
    case "message":
      addMessages([d]);
      break;
    case "sync":
      addMessages(d.messages || []);
      // An answer may be cut by size (v1.1): has_more says to continue.
      if (d.has_more && d.messages && d.messages.length) send("sync", { conversation_id: d.conversation_id, after_seq: d.messages[d.messages.length - 1].seq });
      break;
    case "read":
      onRead(d);
      break;
    case "event":
      onEvent(d);
      break;
    case "presence":
      onPresence(d);
      break;
    case "typing":
      onTyping(d);
      break;
    case "resync":
      // The server could not push something we should have: sync from the last seq held.
      syncConversation(d.conversation_id);
      break;
    case "reconnect":
      // The gateway is draining: come back after after_ms (already jittered by the server).
      if (state.ws) { const ws = state.ws; state.ws = null; ws.onclose = null; ws.close(); }
      state.backoff = 500;
      scheduleReconnect(d.after_ms || 1000, false);
      break;
    case "error":
      onError(d);
      break;
  }
}

// catchUp, after every (re)connect, resends what was never acked (the same
// client_msg_id: the server dedupes), then refreshes the conversation list
// and syncs every conversation held from its last seq. The resends go
// first, before any await: a message typed once the socket is open must not
// overtake the ones typed while it was closed.
async function catchUp() {
  for (const [cmid, p] of pending) {
    if (!p.failed) send("send", { client_msg_id: cmid, conversation_id: p.conversation_id, content: p.content });
  }
  markPendingWaiting();
  try { await loadConversations(); } catch { /* the socket's own errors will tell */ }
  for (const id of state.convs.keys()) syncConversation(id);
}

function syncConversation(id) {
  const s = state.cs.get(id);
  const c = state.convs.get(id);
  if (!s || !s.oldest) { if (c || id) refreshConversation(id); return; } // nothing held: the list's metadata is enough
  send("sync", { conversation_id: id, after_seq: s.held });
}

// ---- messages -------------------------------------------------------------

// addMessages stores messages (any order, duplicates dropped) and renders
// only what is new.
function addMessages(list) {
  const touched = new Set();
  const fresh = [];
  for (const m of list) {
    const s = convState(m.conversation_id);
    if (s.msgs.has(m.seq)) continue; // at-least-once: drop duplicates by (conversation_id, seq)
    s.msgs.set(m.seq, m);
    fresh.push(m);
    touched.add(m.conversation_id);
    if (!s.oldest || m.seq < s.oldest) s.oldest = m.seq;
    s.typing.delete(m.sender_id);
  }
  for (const id of touched) {
    const s = state.cs.get(id);
    const before = s.held;
    if (!before) s.held = s.oldest;
    while (s.msgs.has(s.held + 1)) s.held++;
    const top = Math.max(...fresh.filter((m) => m.conversation_id === id).map((m) => m.seq));
    if (top > s.held + 1 && before) send("sync", { conversation_id: id, after_seq: s.held }); // a gap: fetch what is missing
    const c = state.convs.get(id);
    if (!c) { refreshConversation(id); continue; }
    for (const m of fresh) {
      if (m.conversation_id !== id) continue;
      if (!c.last_message || m.seq >= c.last_message.seq) c.last_message = m;
      c.max_seq = Math.max(c.max_seq, m.seq);
      if (m.sender_id === state.me.id) c.read_seq = Math.max(c.read_seq, m.seq);
    }
    c.unread = Math.max(0, c.max_seq - c.read_seq);
    if (id === state.current) {
      const atBottom = isAtBottom();
      const news = fresh.filter((m) => m.conversation_id === id).sort((a, b) => a.seq - b.seq);
      for (const m of news) {
        if (m.sender_id !== state.me.id && (!atBottom || document.hidden) && !s.divider && m.seq > c.read_seq) s.divider = m.seq;
        insertMessage(m);
      }
      const last = news[news.length - 1];
      if (last && last.seq === c.max_seq && last.sender_id !== state.me.id) announce(last);
      if (atBottom) scrollToBottom(); else updateLatestButton();
      markRead();
      renderTyping();
    }
    updateConversation(id, true);
  }
  updateTitle();
}

function onAck(d) {
  const p = pending.get(d.client_msg_id);
  pending.delete(d.client_msg_id);
  const el = document.querySelector(`#message-list [data-cmid="${CSS.escape(d.client_msg_id)}"]`);
  if (el) el.remove();
  if (p) composerErrorClear("send");
  addMessages([d.message]);
}

function onError(d) {
  const p = d.client_msg_id && pending.get(d.client_msg_id);
  if (!p) { if (d.code !== "not_found" || !d.message.includes("conversation")) showError("side-error", d.message); return; }
  if (d.code === "rate_limited" || d.code === "unavailable") {
    // Transient: try once more a little later, with the same client_msg_id.
    setTimeout(() => { if (pending.has(d.client_msg_id) && !p.failed) send("send", { client_msg_id: d.client_msg_id, conversation_id: p.conversation_id, content: p.content }); }, 1500);
    return;
  }
  p.failed = true;
  p.error = d.message;
  const el = document.querySelector(`#message-list [data-cmid="${CSS.escape(d.client_msg_id)}"]`);
  if (el) setPendingState(el, p);
  if (p.conversation_id === state.current) {
    // Keep the draft: put it back if the composer is empty.
    const box = $("composer-text");
    if (!box.value) { box.value = p.content; onComposerInput(); }
    composerError(d.message, "send");
  }
}

function markPendingWaiting() {
  for (const el of document.querySelectorAll("#message-list .pending")) {
    const p = pending.get(el.dataset.cmid);
    if (p) setPendingState(el, p);
  }
}

async function refreshConversation(id) {
  try { mergeConversation(await api("GET", "/v1/conversations/" + id)); } catch (e) {
    if (e.status === 404 && state.convs.has(id)) markRemoved(id, "You are no longer a member of this conversation.");
    return;
  }
  if (id === state.current) renderChatHead();
  updateConversation(id, false);
}

function onRead(d) {
  const c = state.convs.get(d.conversation_id);
  if (!c) return;
  const m = c.members.find((x) => x.user_id === d.user_id);
  const before = m ? (m.read_seq || 0) : 0;
  if (m) m.read_seq = Math.max(before, d.seq);
  if (d.user_id === state.me.id) {
    c.read_seq = Math.max(c.read_seq, d.seq);
    c.unread = Math.max(0, c.max_seq - c.read_seq);
    updateConversation(c.id, false);
    updateTitle();
    return;
  }
  if (d.conversation_id === state.current) updateReceipts(before, d.seq);
}

function onEvent(d) {
  const actor = d.actor_id;
  const mine = d.user_ids.includes(state.me.id);
  if ((d.kind === "member_removed" || d.kind === "member_left") && mine) {
    if (d.kind === "member_left") { dropConversation(d.conversation_id); return; }
    user(actor).then((a) => markRemoved(d.conversation_id, `${a.nickname} removed you from this group.`));
    return;
  }
  Promise.all([user(actor), ...d.user_ids.map(user)]).then(([a, ...us]) => {
    const names = us.map((u) => (u.id === state.me.id ? "you" : u.nickname)).join(", ");
    const who = actor === state.me.id ? "You" : a.nickname;
    const text = {
      group_created: `${who} created the group`,
      member_added: `${who} added ${names}`,
      member_removed: `${who} removed ${names}`,
      member_left: `${names} left`,
    }[d.kind];
    if (text) addSystemLine(d.conversation_id, text);
  });
  refreshConversation(d.conversation_id);
}

function addSystemLine(id, text) {
  const s = convState(id);
  const c = state.convs.get(id);
  const line = { after: c ? c.max_seq : s.held, text, at: Date.now() };
  s.sys.push(line);
  if (id === state.current) {
    const atBottom = isAtBottom();
    appendItem(systemItem(line));
    if (atBottom) scrollToBottom();
  }
}

function markRemoved(id, text) {
  const s = convState(id);
  s.removed = text;
  addSystemLine(id, text);
  updateConversation(id, false);
  if (id === state.current) renderChatHead();
}

function dropConversation(id) {
  state.convs.delete(id);
  state.cs.delete(id);
  const li = convItems.get(id);
  if (li) li.remove();
  convItems.delete(id);
  if (state.current === id) closeConversation();
  updateTitle();
}

function onPresence(d) {
  state.presence.set(d.user_id, { online: d.online, last_seen_at: d.last_seen_at });
  const u = state.users.get(d.user_id);
  if (u) { u.online = d.online; u.last_seen_at = d.last_seen_at; }
  renderChatSub();
  if (!$("members-panel").hidden) renderMembers();
}

function onTyping(d) {
  if (d.user_id === state.me.id) return;
  const s = convState(d.conversation_id);
  s.typing.set(d.user_id, Date.now() + TYPING_SHOW_MS);
  user(d.user_id).then(() => { renderTyping(); updateConversation(d.conversation_id, false); });
  clearTimeout(state.timers["typing-" + d.conversation_id]);
  state.timers["typing-" + d.conversation_id] = setTimeout(() => { renderTyping(); updateConversation(d.conversation_id, false); }, TYPING_SHOW_MS + 50);
}

function typingText(id) {
  const s = state.cs.get(id);
  if (!s) return "";
  const now = Date.now();
  const who = [...s.typing].filter(([, exp]) => exp > now).map(([u]) => knownName(u));
  if (!who.length) return "";
  return who.length === 1 ? `${who[0]} is typing…` : `${who.slice(0, 2).join(" and ")}${who.length > 2 ? " and others" : ""} are typing…`;
}

function markRead() {
  const c = state.convs.get(state.current);
  if (!c || document.hidden || !isAtBottom()) return;
  const s = convState(c.id);
  const top = s.held;
  if (top > c.read_seq) {
    c.read_seq = top;
    c.unread = Math.max(0, c.max_seq - top);
    send("read", { conversation_id: c.id, seq: top });
    updateConversation(c.id, false);
    updateTitle();
  }
}
document.addEventListener("visibilitychange", markRead);

// A page that is left may be kept in the back/forward cache: close the
// socket so that the server sees the user go (presence), and come back with
// a fresh connection and a catch-up if the page is shown again.
window.addEventListener("pagehide", () => {
  if (!state.ws) return;
  const ws = state.ws;
  state.ws = null;
  ws.onclose = null;
  ws.close(1000, "page hidden");
  Object.values(state.timers).forEach(clearTimeout);
});
window.addEventListener("pageshow", (ev) => { if (ev.persisted && state.token && state.me) connect(); });

// ---- the message list: incremental rendering ----------------------------

let rendered = new Map(); // seq -> <li> of the open conversation
let order = [];           // rendered seqs, ascending

const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric", year: "numeric" });
const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });
const dayKey = (t) => { const d = new Date(t); return d.getFullYear() * 10000 + d.getMonth() * 100 + d.getDate(); };

function dayLabel(t) {
  const k = dayKey(t), now = Date.now();
  if (k === dayKey(now)) return "Today";
  if (k === dayKey(now - 864e5)) return "Yesterday";
  return dayFmt.format(new Date(t));
}

function isAtBottom() {
  const box = $("messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 60;
}

function scrollToBottom() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
  updateLatestButton();
}

function messageItem(m) {
  const li = document.createElement("div");
  li.setAttribute("role", "listitem");
  const mine = m.sender_id === state.me.id;
  li.className = "msg" + (mine ? " mine" : "");
  li.dataset.seq = m.seq;
  li.dataset.sender = m.sender_id;
  const day = document.createElement("div"); day.className = "day"; day.hidden = true;
  const bubble = document.createElement("div"); bubble.className = "bubble";
  const who = document.createElement("div"); who.className = "who"; who.textContent = knownName(m.sender_id);
  if (!state.users.has(m.sender_id)) user(m.sender_id).then((u) => { who.textContent = u.nickname; });
  const body = document.createElement("div"); body.className = "body";
  body.textContent = m.content_type === "text" || !m.content_type ? m.content : `[${m.content_type}] ${m.content}`;
  const foot = document.createElement("div"); foot.className = "foot";
  const time = document.createElement("time");
  time.dateTime = m.created_at;
  time.textContent = timeFmt.format(new Date(m.created_at));
  time.title = fullFmt.format(new Date(m.created_at));
  foot.append(time);
  if (mine) { const r = document.createElement("span"); r.className = "receipt"; foot.append(r); }
  bubble.append(who, body, foot);
  li.append(day, bubble);
  return li;
}

// decorate sets the day separator and sender grouping of a message from the one before it.
function decorate(li, m, prev) {
  const t = Date.parse(m.created_at);
  const day = li.firstChild;
  const newDay = !prev || dayKey(Date.parse(prev.created_at)) !== dayKey(t);
  day.hidden = !newDay;
  if (newDay) day.textContent = dayLabel(t);
  const grouped = !newDay && prev.sender_id === m.sender_id && t - Date.parse(prev.created_at) < GROUP_WINDOW_MS;
  li.classList.toggle("grouped", grouped);
}

// receiptText: direct chats "✓ Sent" / "✓✓ Read"; groups "Read by N of M".
function receiptText(c, seq) {
  const others = c.members.filter((x) => x.user_id !== state.me.id);
  const read = others.filter((x) => (x.read_seq || 0) >= seq).length;
  if (c.type === "direct") return read > 0 ? "✓✓ Read" : "✓ Sent";
  if (read === 0) return "✓ Sent";
  return `Read by ${read} of ${others.length}`;
}

function setReceipt(li, c, seq) {
  const r = li.querySelector(".receipt");
  if (!r) return;
  const t = receiptText(c, seq);
  if (r.textContent !== t) r.textContent = t;
}

// updateReceipts refreshes the receipts that a read pointer moving from
// `from` to `to` can change: only own messages in that range.
function updateReceipts(from, to) {
  const c = state.convs.get(state.current);
  if (!c) return;
  let i = lowerBound(order, from + 1);
  for (; i < order.length && order[i] <= to; i++) {
    const li = rendered.get(order[i]);
    if (li.classList.contains("mine")) setReceipt(li, c, order[i]);
  }
}

function lowerBound(a, x) {
  let lo = 0, hi = a.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (a[mid] < x) lo = mid + 1; else hi = mid; }
  return lo;
}

function dividerItem() {
  const li = document.createElement("div");
  li.setAttribute("role", "listitem");
  li.className = "divider";
  li.id = "new-divider";
  const span = document.createElement("span"); span.textContent = "New messages";
  li.append(span);
  return li;
}

function systemItem(line) {
  const li = document.createElement("div");
  li.setAttribute("role", "listitem");
  li.className = "sys";
  li.textContent = line.text;
  li.dataset.after = line.after;
  return li;
}

// The list is cut into chunks of about CHUNK messages, each skipped by
// layout and paint while off screen (content-visibility), so that adding a
// message lays out one chunk and steps over the others, however long the
// history is.
const CHUNK = 100;

function newChunk() {
  const d = document.createElement("div");
  d.className = "chunk";
  d.setAttribute("role", "none");
  return d;
}

function lastChunk() {
  const list = $("message-list");
  let c = list.lastElementChild;
  if (!c || c.childElementCount >= CHUNK) { c = newChunk(); list.append(c); }
  return c;
}

function appendItem(el) { lastChunk().append(el); }

// insertMessage puts one message of the open conversation in place. The
// common case, a message newer than all others, appends one node.
function insertMessage(m) {
  const c = state.convs.get(state.current);
  const s = convState(state.current);
  const li = messageItem(m);
  const i = lowerBound(order, m.seq);
  const prev = i > 0 ? s.msgs.get(order[i - 1]) : null;
  decorate(li, m, prev);
  if (li.classList.contains("mine")) setReceipt(li, c, m.seq);
  if (i === order.length) {
    // Messages still in flight stay last.
    const inFlight = pending.size ? $("message-list").querySelector(".pending") : null;
    const chunk = inFlight ? inFlight.parentNode : lastChunk();
    if (s.divider === m.seq) chunk.insertBefore(dividerItem(), inFlight);
    chunk.insertBefore(li, inFlight);
    order.push(m.seq);
  } else {
    const next = rendered.get(order[i]);
    // Anything placed before the next message (a divider, membership lines) stays with it.
    let anchor = next;
    while (anchor.previousSibling && !anchor.previousSibling.dataset.seq) anchor = anchor.previousSibling;
    const chunk = anchor.parentNode;
    if (anchor === chunk.firstChild && chunk.childElementCount >= CHUNK) {
      // At the start of a full chunk (older history): the end of the chunk before, or a new one.
      let before = chunk.previousElementSibling;
      if (!before || before.childElementCount >= CHUNK) { before = newChunk(); chunk.before(before); }
      before.append(li);
    } else {
      chunk.insertBefore(li, anchor);
    }
    order.splice(i, 0, m.seq);
    decorate(next, s.msgs.get(order[i + 1]), m);
  }
  rendered.set(m.seq, li);
  return li;
}

// renderAll builds the open conversation's list once, when it is opened.
function renderAll() {
  const c = state.convs.get(state.current);
  const s = convState(state.current);
  rendered = new Map();
  order = [...s.msgs.keys()].sort((a, b) => a - b);
  const frag = document.createDocumentFragment();
  let chunk = null;
  const add = (el) => {
    if (!chunk || chunk.childElementCount >= CHUNK) { chunk = newChunk(); frag.append(chunk); }
    chunk.append(el);
  };
  let prev = null;
  let sys = 0;
  const lines = s.sys.slice().sort((a, b) => a.after - b.after);
  for (const seq of order) {
    while (sys < lines.length && lines[sys].after < seq) add(systemItem(lines[sys++]));
    const m = s.msgs.get(seq);
    if (s.divider === seq) add(dividerItem());
    const li = messageItem(m);
    decorate(li, m, prev);
    if (li.classList.contains("mine")) setReceipt(li, c, seq);
    rendered.set(seq, li);
    add(li);
    prev = m;
  }
  while (sys < lines.length) add(systemItem(lines[sys++]));
  for (const [cmid, p] of pending) if (p.conversation_id === state.current) add(pendingItem(cmid, p));
  $("message-list").replaceChildren(frag);
  renderOlderState();
}

function renderOlderState() {
  const s = state.cs.get(state.current);
  if (!s) return;
  $("older-state").textContent = s.loadingOlder ? "Loading older messages…" : (s.hasOlder === false && s.msgs.size ? "Start of the conversation" : "");
}

function pendingItem(cmid, p) {
  const li = messageItem({ seq: 0, sender_id: state.me.id, content: p.content, content_type: "text", created_at: new Date().toISOString() });
  delete li.dataset.seq;
  li.dataset.cmid = cmid;
  li.firstChild.remove(); // no day separator on a message in flight
  setPendingState(li, p);
  return li;
}

function setPendingState(li, p) {
  li.classList.add("pending");
  li.classList.toggle("failed", !!p.failed);
  const r = li.querySelector(".receipt");
  const online = state.ws && state.ws.readyState === WebSocket.OPEN;
  r.textContent = p.failed ? "Failed" : (online ? "Sending…" : "Waiting for connection…");
  r.title = p.error || "";
  let retry = li.querySelector(".retry");
  if (p.failed && !retry) {
    retry = document.createElement("button");
    retry.type = "button";
    retry.className = "link retry";
    retry.textContent = "Retry";
    retry.addEventListener("click", () => {
      const cmid = li.dataset.cmid;
      const q = pending.get(cmid);
      if (!q) return;
      q.failed = false;
      setPendingState(li, q);
      send("send", { client_msg_id: cmid, conversation_id: q.conversation_id, content: q.content });
    });
    li.querySelector(".foot").append(retry);
  } else if (!p.failed && retry) retry.remove();
}

function announce(m) {
  $("announcer").textContent = `${knownName(m.sender_id)}: ${m.content.slice(0, 200)}`;
}

function updateLatestButton() {
  const c = state.convs.get(state.current);
  const show = !!c && !isAtBottom();
  const b = $("btn-latest");
  b.hidden = !show;
  if (show) b.textContent = c.unread > 0 ? `↓ ${c.unread} new` : "↓ Latest";
}
$("btn-latest").addEventListener("click", () => { scrollToBottom(); markRead(); });

// Older history loads as the reader nears the top: an observer watches a
// sentinel above the list; the reader's place is kept by moving the scroll
// position by exactly what was inserted above the first visible message.
async function loadOlder() {
  const id = state.current;
  const s = state.cs.get(id);
  if (!s || s.loadingOlder || s.hasOlder === false) return;
  const c = state.convs.get(id);
  const before = s.oldest || c.max_seq + 1;
  if (before <= 1) { s.hasOlder = false; renderOlderState(); return; }
  s.loadingOlder = true;
  renderOlderState();
  try {
    const r = await api("GET", `/v1/conversations/${id}/messages?before_seq=${before}&limit=${PAGE}`);
    if (state.current !== id) return;
    const box = $("messages");
    const anchor = firstVisible();
    const top = anchor ? anchor.getBoundingClientRect().top : 0;
    addMessages(r.messages); // below the fold: inserted above the anchor
    s.hasOlder = r.has_more;
    if (anchor) box.scrollTop += anchor.getBoundingClientRect().top - top;
  } catch (e) {
    $("older-state").textContent = e.message;
  } finally {
    s.loadingOlder = false;
    renderOlderState();
  }
  // Still near the top (short messages): keep going.
  if (state.current === id && s.hasOlder && $("messages").scrollTop < 200) loadOlder();
}

// firstVisible finds the first message whose bottom is below the top of the
// view, by binary search over the (ordered) message nodes.
function firstVisible() {
  const top = $("messages").getBoundingClientRect().top + 1;
  let lo = 0, hi = order.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (rendered.get(order[mid]).getBoundingClientRect().bottom < top) lo = mid + 1; else hi = mid;
  }
  return lo < order.length ? rendered.get(order[lo]) : null;
}

const olderObserver = new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) loadOlder();
}, { root: $("messages"), rootMargin: "400px 0px 0px 0px" });
olderObserver.observe($("older-sentinel"));

$("messages").addEventListener("scroll", () => {
  updateLatestButton();
  if (isAtBottom()) markRead();
}, { passive: true });

// ---- composer ----------------------------------------------------------

const encoder = new TextEncoder();

function composerError(text, kind) {
  const el = $("composer-error");
  el.textContent = text || "";
  el.dataset.kind = text ? (kind || "") : "";
}
function composerErrorClear(kind) { if ($("composer-error").dataset.kind === kind) composerError(null); }

function onComposerInput() {
  const box = $("composer-text");
  // Grow with the text; while the composer is not displayed there is nothing to measure.
  box.style.height = "auto";
  if (box.scrollHeight > 0) box.style.height = Math.min(box.scrollHeight + 2, window.innerHeight * 0.4) + "px";
  const bytes = encoder.encode(box.value).length;
  const count = $("composer-count");
  count.textContent = bytes >= COUNT_FROM_BYTES ? `${bytes.toLocaleString()} / ${MAX_CONTENT_BYTES.toLocaleString()} bytes` : "";
  count.classList.toggle("over", bytes > MAX_CONTENT_BYTES);
  if (bytes > MAX_CONTENT_BYTES) composerError(`Too long to send: ${bytes.toLocaleString()} bytes, at most ${MAX_CONTENT_BYTES.toLocaleString()}. Shorten it or split it.`, "size");
  else { composerErrorClear("size"); composerErrorClear("send"); }
  if (state.current) convState(state.current).draft = box.value;
  const s = state.current && convState(state.current);
  if (s && box.value.trim() && Date.now() - s.typingSent > TYPING_SEND_EVERY && !s.removed) {
    s.typingSent = Date.now();
    send("typing", { conversation_id: state.current });
  }
}
$("composer-text").addEventListener("input", onComposerInput);
$("composer-text").addEventListener("keydown", (ev) => {
  // Enter sends, Shift+Enter is a new line; never while an IME is composing.
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && !ev.altKey && !ev.ctrlKey && !ev.metaKey) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("composer-text");
  const content = input.value;
  if (!content.trim() || !state.current) return;
  const bytes = encoder.encode(content).length;
  if (bytes > MAX_CONTENT_BYTES) { onComposerInput(); input.focus(); return; } // the draft stays
  const cmid = (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random());
  const p = { conversation_id: state.current, content };
  pending.set(cmid, p);
  if (!send("send", { client_msg_id: cmid, conversation_id: state.current, content })) composerError(OFFLINE, "offline"); // catchUp resends it
  input.value = "";
  convState(state.current).draft = "";
  convState(state.current).typingSent = 0;
  onComposerInput();
  appendItem(pendingItem(cmid, p));
  scrollToBottom();
  input.focus();
});

// ---- conversations -------------------------------------------------------

const convItems = new Map(); // id -> <li>

function convTitleNow(c) {
  if (c.type === "group") return c.name;
  const other = c.members.find((m) => m.user_id !== state.me.id) || c.members[0];
  const u = other && state.users.get(other.user_id);
  return u ? `${u.nickname} @${u.username}` : "…";
}

async function convTitle(c) {
  if (c.type !== "group") {
    const other = c.members.find((m) => m.user_id !== state.me.id) || c.members[0];
    if (other) await user(other.user_id);
  }
  return convTitleNow(c);
}

function otherMember(c) {
  if (c.type !== "direct") return null;
  const o = c.members.find((m) => m.user_id !== state.me.id);
  return o ? o.user_id : null;
}

function activity(c) { return c.last_message ? c.last_message.created_at : c.created_at; }

// renderConversations sorts the whole list (on load); updateConversation
// refreshes one entry and, when it has news, moves it to the top.
function renderConversations() {
  const list = [...state.convs.values()].sort((a, b) => activity(b).localeCompare(activity(a)));
  const items = list.map((c) => { updateConversation(c.id, false); return convItems.get(c.id); });
  $("conversations").replaceChildren(...items);
  updateTitle();
}

function updateConversation(id, moveToTop) {
  const c = state.convs.get(id);
  if (!c) return;
  let li = convItems.get(id);
  if (!li) {
    li = document.createElement("li");
    li.dataset.id = id;
    const b = document.createElement("button");
    b.type = "button";
    b.className = "conv";
    const title = document.createElement("span"); title.className = "title";
    const preview = document.createElement("span"); preview.className = "preview";
    const badge = document.createElement("span"); badge.className = "badge";
    b.append(title, preview, badge);
    b.addEventListener("click", () => openConversation(id));
    li.append(b);
    convItems.set(id, li);
    $("conversations").prepend(li);
    convTitle(c).then(() => updateConversation(id, false));
  }
  const s = convState(id);
  const [title, preview, badge] = li.firstChild.children;
  title.textContent = convTitleNow(c);
  const typing = typingText(id);
  preview.classList.toggle("typing", !!typing);
  preview.textContent = s.removed ? s.removed : typing || (c.last_message ? (c.last_message.sender_id === state.me.id ? "You: " : "") + c.last_message.content.slice(0, 120) : (c.type === "group" ? "Group created" : "No messages yet"));
  badge.textContent = c.unread > 0 ? String(c.unread) : "";
  badge.hidden = !(c.unread > 0);
  li.classList.toggle("active", id === state.current);
  li.classList.toggle("unread", c.unread > 0);
  li.classList.toggle("gone", !!s.removed);
  li.firstChild.setAttribute("aria-label", `${title.textContent}${c.unread > 0 ? `, ${c.unread} unread` : ""}`);
  if (moveToTop && li.parentNode && li.parentNode.firstChild !== li) li.parentNode.prepend(li);
}

function updateTitle() {
  let n = 0;
  for (const c of state.convs.values()) n += c.unread || 0;
  const t = n > 0 ? `(${n}) GoChat` : "GoChat";
  if (document.title !== t) document.title = t;
}

async function openConversation(id) {
  const c = state.convs.get(id);
  if (!c) return;
  if (state.current && state.current !== id) convState(state.current).draft = $("composer-text").value;
  const prevCurrent = state.current;
  state.current = id;
  localStorage.setItem("gochat.last." + state.me.id, id);
  setScreen("chat");
  if (prevCurrent) updateConversation(prevCurrent, false);
  updateConversation(id, false);
  $("members-panel").hidden = true;
  $("btn-members").setAttribute("aria-expanded", "false");
  const s = convState(id);
  s.divider = c.unread > 0 ? c.read_seq + 1 : 0;
  composerError(null);
  $("composer-text").value = s.draft;
  onComposerInput();
  renderChatHead();
  renderAll();
  if (s.hasOlder === null) {
    // First open: the newest page (below whatever arrived live before).
    const below = s.oldest || c.max_seq + 1;
    try {
      const r = await api("GET", `/v1/conversations/${id}/messages?before_seq=${below}&limit=${PAGE}`);
      if (state.current !== id) return;
      addMessages(r.messages);
      s.hasOlder = r.has_more;
    } catch (e) { $("older-state").textContent = e.message; }
  }
  if (state.current !== id) return;
  if (s.held < c.max_seq && s.oldest) send("sync", { conversation_id: id, after_seq: s.held });
  const div = $("new-divider");
  if (div && div.offsetTop > $("messages").clientHeight / 2) div.scrollIntoView({ block: "center" });
  else scrollToBottom();
  renderOlderState();
  markRead();
  if (matchMedia("(min-width: 701px)").matches) $("composer-text").focus();
  if (s.hasOlder && $("messages").scrollTop < 200) loadOlder();
}

function closeConversation() {
  state.current = null;
  rendered = new Map();
  order = [];
  $("message-list").replaceChildren();
  renderChatHead();
  setScreen("list");
}

function setScreen(screen) {
  document.body.dataset.screen = screen;
  sessionStorage.setItem("gochat.screen", screen);
}
$("btn-back").addEventListener("click", () => {
  const id = state.current;
  if (id) convState(id).draft = $("composer-text").value;
  setScreen("list");
  const li = id && convItems.get(id);
  if (li) li.firstChild.focus();
});

function renderChatHead() {
  const c = state.convs.get(state.current);
  const s = c && convState(c.id);
  $("composer").hidden = !c || !!s.removed;
  $("removed-notice").hidden = !c || !s.removed;
  $("removed-notice").textContent = s && s.removed ? s.removed + " You can still read the history." : "";
  $("btn-members").hidden = !c || c.type !== "group" || !!s.removed;
  $("chat-title").textContent = c ? convTitleNow(c) : "No conversation open";
  if (c) convTitle(c).then(() => { if (state.current === c.id) $("chat-title").textContent = convTitleNow(c); });
  if (!c) { $("members-panel").hidden = true; $("chat-sub").textContent = ""; return; }
  const other = otherMember(c);
  if (other) {
    // Fresh presence for the header: GET /v1/users/{id} answers online and last_seen_at.
    api("GET", "/v1/users/" + encodeURIComponent(other)).then((u) => {
      state.users.set(u.id, u);
      state.presence.set(u.id, { online: u.online, last_seen_at: u.last_seen_at });
      renderChatSub();
    }).catch(() => {});
  }
  renderChatSub();
  if (!$("members-panel").hidden) renderMembers();
}

function presenceText(id) {
  const p = state.presence.get(id);
  if (!p) return "";
  if (p.online) return "online";
  if (!p.last_seen_at) return "offline";
  const t = Date.parse(p.last_seen_at), ago = Date.now() - t;
  if (ago < 60e3) return "last seen just now";
  if (ago < 3600e3) return `last seen ${Math.floor(ago / 60e3)} min ago`;
  if (dayKey(t) === dayKey(Date.now())) return `last seen today at ${timeFmt.format(new Date(t))}`;
  return `last seen ${dayLabel(t).toLowerCase() === "yesterday" ? "yesterday" : new Date(t).toLocaleDateString()} at ${timeFmt.format(new Date(t))}`;
}

function renderChatSub() {
  const c = state.convs.get(state.current);
  const el = $("chat-sub");
  if (!c) { el.textContent = ""; return; }
  const typing = typingText(c.id);
  let text = typing;
  if (!text) {
    const other = otherMember(c);
    text = other ? presenceText(other) : `${c.members.length} members, ${c.members.filter((m) => state.presence.get(m.user_id)?.online && m.user_id !== state.me.id).length} online`;
  }
  el.textContent = text;
  el.classList.toggle("online", !typing && text === "online");
}
const renderTyping = renderChatSub;
setInterval(() => { if (state.current) renderChatSub(); }, 30000);

$("direct-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("side-error", null);
  try {
    const u = await userByName($("direct-username").value);
    const c = await api("POST", "/v1/conversations/direct", { user_id: u.id });
    mergeConversation(c);
    updateConversation(c.id, true);
    $("direct-username").value = "";
    await openConversation(c.id);
  } catch (e) { showError("side-error", e.status === 404 ? "No such user" : e); }
});

async function idsFor(names) {
  const out = [];
  for (const n of names.split(",").map((s) => s.trim()).filter(Boolean)) {
    try { out.push((await userByName(n)).id); } catch (e) { throw e.status === 404 ? new Error("No such user: " + n) : e; }
  }
  return out;
}

$("group-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("side-error", null);
  try {
    const c = await api("POST", "/v1/groups", { name: $("group-name").value.trim(), member_ids: await idsFor($("group-members").value) });
    mergeConversation(c);
    updateConversation(c.id, true);
    $("group-name").value = ""; $("group-members").value = "";
    await openConversation(c.id);
  } catch (e) { showError("side-error", e); }
});

$("btn-members").addEventListener("click", () => {
  const p = $("members-panel");
  p.hidden = !p.hidden;
  $("btn-members").setAttribute("aria-expanded", String(!p.hidden));
  if (!p.hidden) {
    const c = state.convs.get(state.current);
    // Fresh presence for the list.
    if (c) Promise.all(c.members.map((m) => api("GET", "/v1/users/" + m.user_id).then((u) => {
      state.users.set(u.id, u); state.presence.set(u.id, { online: u.online, last_seen_at: u.last_seen_at });
    }).catch(() => {}))).then(renderMembers);
    renderMembers();
  }
});

// renderMembers updates the member list in place (presence changes often),
// and rebuilds it only when the members themselves change.
async function renderMembers() {
  const c = state.convs.get(state.current);
  if (!c) return;
  await Promise.all(c.members.map((m) => user(m.user_id)));
  if (state.current !== c.id) return;
  const mine = c.members.find((m) => m.user_id === state.me.id);
  const canManage = !!mine && (mine.role === "owner" || mine.role === "admin");
  const list = $("members-list");
  const key = c.id + "|" + canManage + "|" + c.members.map((m) => m.user_id + ":" + m.role).join(",");
  if (list.dataset.key !== key) {
    list.dataset.key = key;
    list.replaceChildren(...c.members.map((m) => {
      const u = state.users.get(m.user_id);
      const li = document.createElement("li");
      li.dataset.user = m.user_id;
      const label = document.createElement("span");
      li.append(label);
      if (canManage && m.user_id !== state.me.id && m.role !== "owner") {
        const b = document.createElement("button");
        b.className = "link"; b.textContent = "Remove";
        b.setAttribute("aria-label", `Remove ${u.nickname} from the group`);
        b.addEventListener("click", async () => {
          if (!(await confirmDialog(`Remove ${u.nickname} from “${c.name}”? They will no longer get its messages.`, "Remove"))) return;
          try { await api("DELETE", `/v1/groups/${c.id}/members/${m.user_id}`); await refreshConversation(c.id); renderMembers(); }
          catch (e) { showError("members-error", e); }
        });
        li.append(b);
      }
      return li;
    }));
  }
  for (const li of list.children) {
    const m = c.members.find((x) => x.user_id === li.dataset.user);
    const u = state.users.get(li.dataset.user);
    if (!m || !u) continue;
    const dot = document.createElement("span");
    const online = m.user_id === state.me.id || state.presence.get(m.user_id)?.online;
    dot.className = "dot" + (online ? " on" : "");
    const pres = m.user_id === state.me.id ? "you" : (presenceText(m.user_id) || "");
    li.firstChild.replaceChildren(dot, `${u.nickname} @${u.username} · ${m.role}${pres ? " · " + pres : ""}`);
  }
  $("add-member-form").hidden = !canManage;
}

$("add-member-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("members-error", null);
  try {
    const c = await api("POST", `/v1/groups/${state.current}/members`, { user_ids: await idsFor($("add-member-username").value) });
    mergeConversation(c);
    $("add-member-username").value = "";
    renderMembers();
  } catch (e) { showError("members-error", e); }
});

$("btn-leave").addEventListener("click", async () => {
  const c = state.convs.get(state.current);
  if (!c) return;
  if (!(await confirmDialog(`Leave “${c.name}”? You will no longer get its messages, and only an admin can add you back.`, "Leave group"))) return;
  try {
    await api("POST", `/v1/groups/${c.id}/leave`);
    dropConversation(c.id);
  } catch (e) { showError("members-error", e); }
});

if (state.token) start(); else { $("auth").hidden = false; authMode(false); }
