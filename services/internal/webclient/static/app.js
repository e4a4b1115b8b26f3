// GoChat web client: plain JavaScript over the public client API
// (docs/protocol.md). The token lives in sessionStorage, so two tabs can be
// two different users.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem("gochat.token"),
  me: null,
  convs: new Map(),      // id -> Conversation
  msgs: new Map(),       // conversation id -> Map(seq -> Message)
  held: new Map(),       // conversation id -> highest contiguous seq held
  hasOlder: new Map(),   // conversation id -> bool
  users: new Map(),      // id -> User
  current: null,
  ws: null,
  backoff: 500,
  heartbeatMs: 25000,
  lastFrame: 0,
  timers: {},
};

// ---- HTTP -------------------------------------------------------------

class APIError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (resp.status === 204) return null;
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const e = data.error || { code: "internal", message: resp.statusText };
    if (resp.status === 401 && path !== "/v1/auth/login") logout();
    throw new APIError(resp.status, e.code, e.message);
  }
  return data;
}

async function user(id) {
  if (!state.users.has(id)) {
    try { state.users.set(id, await api("GET", "/v1/users/" + encodeURIComponent(id))); }
    catch { return { id, username: id.slice(0, 6), nickname: "unknown" }; }
  }
  return state.users.get(id);
}
const userByName = (name) => api("GET", "/v1/users?username=" + encodeURIComponent(name.trim()));

// ---- auth -------------------------------------------------------------

function showError(el, err) { $(el).textContent = err ? (err.message || String(err)) : ""; }

async function authenticate(path, body) {
  showError("auth-error", null);
  try {
    const r = await api("POST", path, body);
    state.token = r.token;
    sessionStorage.setItem("gochat.token", r.token);
    await start();
  } catch (e) { showError("auth-error", e); }
}

function credentials() {
  return { username: $("auth-username").value.trim(), password: $("auth-password").value, nickname: $("auth-nickname").value.trim() };
}

$("auth-form").addEventListener("submit", (ev) => { ev.preventDefault(); const c = credentials(); authenticate("/v1/auth/login", { username: c.username, password: c.password }); });
$("btn-register").addEventListener("click", () => { const c = credentials(); authenticate("/v1/auth/register", c); });
$("btn-guest").addEventListener("click", () => authenticate("/v1/auth/guest", { nickname: $("auth-nickname").value.trim() }));
$("btn-logout").addEventListener("click", logout);

function logout() {
  sessionStorage.removeItem("gochat.token");
  state.token = null;
  if (state.ws) { state.ws.onclose = null; state.ws.close(); state.ws = null; }
  Object.values(state.timers).forEach(clearTimeout);
  location.reload();
}

// ---- start --------------------------------------------------------------

async function start() {
  try { state.me = await api("GET", "/v1/me"); } catch { $("auth").hidden = false; return; }
  state.users.set(state.me.id, state.me);
  $("auth").hidden = true;
  $("app").hidden = false;
  $("me-name").textContent = state.me.nickname + (state.me.guest ? " (guest)" : " @" + state.me.username);
  await loadConversations();
  connect();
}

async function loadConversations() {
  const r = await api("GET", "/v1/conversations");
  for (const c of r.conversations) mergeConversation(c);
  renderConversations();
}

function mergeConversation(c) {
  const old = state.convs.get(c.id);
  state.convs.set(c.id, c);
  if (old && old.last_message && (!c.last_message || c.last_message.seq < old.last_message.seq)) c.last_message = old.last_message;
  if (!state.held.has(c.id)) state.held.set(c.id, 0);
}

// ---- WebSocket ----------------------------------------------------------

function setStatus(s, text) { const el = $("status"); el.dataset.state = s; el.textContent = text; }

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/v1/ws?token=${encodeURIComponent(state.token)}`);
  state.ws = ws;
  setStatus("connecting", "Connecting…");
  ws.onmessage = (ev) => { state.lastFrame = Date.now(); let f; try { f = JSON.parse(ev.data); } catch { return; } onFrame(f); };
  ws.onclose = () => { if (state.ws === ws) scheduleReconnect(state.backoff); };
  ws.onerror = () => ws.close();
}

function scheduleReconnect(delay) {
  clearTimeout(state.timers.heartbeat);
  clearTimeout(state.timers.reconnect);
  state.ws = null;
  const jittered = Math.round(delay * (0.75 + Math.random() * 0.5));
  let left = Math.ceil(jittered / 1000);
  setStatus("reconnecting", `Reconnecting in ${left}s…`);
  const tick = () => { left -= 1; if (left > 0) { setStatus("reconnecting", `Reconnecting in ${left}s…`); state.timers.tick = setTimeout(tick, 1000); } };
  state.timers.tick = setTimeout(tick, 1000);
  state.timers.reconnect = setTimeout(() => { clearTimeout(state.timers.tick); connect(); }, jittered);
  state.backoff = Math.min(state.backoff * 2, 15000);
}

function send(type, data) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
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

const pending = new Map(); // client_msg_id -> {conversation_id, content}

function onFrame(f) {
  const d = f.data || {};
  switch (f.type) {
    case "hello":
      state.backoff = 500;
      state.heartbeatMs = Math.max(1000, Math.floor(d.heartbeat_ms * 0.8));
      setStatus("online", "Connected");
      heartbeat();
      resync();
      break;
    case "ack":
      pending.delete(d.client_msg_id);
      addMessage(d.message);
      break;
    case "message":
      addMessage(d);
      break;
    case "sync":
      for (const m of d.messages) addMessage(m);
      if (d.has_more && d.messages.length) send("sync", { conversation_id: d.conversation_id, after_seq: d.messages[d.messages.length - 1].seq });
      break;
    case "read":
      onRead(d);
      break;
    case "event":
      onEvent(d);
      break;
    case "reconnect": {
      // The gateway is draining. This socket keeps receiving until the
      // gateway closes it (1001, no earlier than after_ms); after after_ms
      // we connect again (to another gateway, behind the load balancer) and
      // the new socket's hello syncs every conversation from the last seq held.
      const ws = state.ws;
      if (ws) ws.onclose = null; // that close is expected: no backoff reconnect for it
      clearTimeout(state.timers.reconnect);
      setStatus("reconnecting", "Server is moving you to another gateway…");
      state.timers.reconnect = setTimeout(() => {
        if (ws && ws.readyState <= WebSocket.OPEN) ws.close();
        if (state.ws === ws) connect();
      }, Math.max(0, d.after_ms || 0));
      break;
    }
    case "error":
      if (d.client_msg_id && pending.has(d.client_msg_id)) {
        pending.delete(d.client_msg_id);
        document.querySelectorAll(`[data-cmid="${CSS.escape(d.client_msg_id)}"]`).forEach((el) => el.remove());
      }
      showError("side-error", d.message);
      break;
  }
}

// resync catches up every known conversation from the last seq held, and
// resends what was never acked (the same client_msg_id: the server dedupes).
async function resync() {
  try { await loadConversations(); } catch { /* the socket's own errors will tell */ }
  for (const [id, c] of state.convs) {
    const held = state.held.get(id) || 0;
    if (c.max_seq > held && (state.msgs.has(id) || id === state.current)) send("sync", { conversation_id: id, after_seq: held });
  }
  for (const [cmid, p] of pending) send("send", { client_msg_id: cmid, conversation_id: p.conversation_id, content: p.content });
}

// ---- messages -------------------------------------------------------------

function addMessage(m) {
  let msgs = state.msgs.get(m.conversation_id);
  if (!msgs) { msgs = new Map(); state.msgs.set(m.conversation_id, msgs); }
  if (msgs.has(m.seq)) return; // at-least-once: drop duplicates
  msgs.set(m.seq, m);
  const held = state.held.get(m.conversation_id) || 0;
  if (m.seq > held + 1 && held > 0) {
    send("sync", { conversation_id: m.conversation_id, after_seq: held }); // a gap: fetch what is missing
  }
  let h = held;
  while (msgs.has(h + 1)) h++;
  if (held === 0 && h === 0) h = m.seq; // first message seen live in a conversation not opened yet
  state.held.set(m.conversation_id, h);
  const c = state.convs.get(m.conversation_id);
  if (!c) { refreshConversation(m.conversation_id); return; }
  if (!c.last_message || m.seq >= c.last_message.seq) c.last_message = m;
  c.max_seq = Math.max(c.max_seq, m.seq);
  if (m.sender_id === state.me.id) c.read_seq = Math.max(c.read_seq, m.seq);
  c.unread = Math.max(0, c.max_seq - c.read_seq);
  if (m.conversation_id === state.current) { renderMessages(); markRead(); }
  renderConversations();
}

async function refreshConversation(id) {
  try { mergeConversation(await api("GET", "/v1/conversations/" + id)); } catch (e) { if (e.status === 404) state.convs.delete(id); }
  if (id === state.current) renderChat();
  renderConversations();
}

function onRead(d) {
  const c = state.convs.get(d.conversation_id);
  if (!c) return;
  const m = c.members.find((x) => x.user_id === d.user_id);
  if (m) m.read_seq = Math.max(m.read_seq || 0, d.seq);
  if (d.user_id === state.me.id) { c.read_seq = Math.max(c.read_seq, d.seq); c.unread = Math.max(0, c.max_seq - c.read_seq); renderConversations(); }
  if (d.conversation_id === state.current) renderMessages();
}

function onEvent(d) {
  const gone = (d.kind === "member_removed" || d.kind === "member_left") && d.user_ids.includes(state.me.id);
  if (gone) {
    state.convs.delete(d.conversation_id);
    if (state.current === d.conversation_id) { state.current = null; renderChat(); }
    renderConversations();
    return;
  }
  refreshConversation(d.conversation_id);
}

function markRead() {
  const c = state.convs.get(state.current);
  if (!c || document.hidden) return;
  const top = state.held.get(c.id) || 0;
  if (top > c.read_seq) {
    c.read_seq = top;
    c.unread = Math.max(0, c.max_seq - top);
    send("read", { conversation_id: c.id, seq: top });
    renderConversations();
  }
}
document.addEventListener("visibilitychange", markRead);

async function loadOlder() {
  const id = state.current;
  const msgs = state.msgs.get(id) || new Map();
  const oldest = msgs.size ? Math.min(...msgs.keys()) : (state.convs.get(id).max_seq + 1);
  if (oldest <= 1) { state.hasOlder.set(id, false); renderMessages(); return; }
  const box = $("messages");
  const before = box.scrollHeight;
  const r = await api("GET", `/v1/conversations/${id}/messages?before_seq=${oldest}&limit=50`);
  for (const m of r.messages) addMessage(m);
  state.hasOlder.set(id, r.has_more);
  renderMessages();
  box.scrollTop = box.scrollHeight - before;
}
$("btn-older").addEventListener("click", loadOlder);
$("messages").addEventListener("scroll", () => { if ($("messages").scrollTop === 0 && state.hasOlder.get(state.current)) loadOlder(); });

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("composer-text");
  const content = input.value;
  if (!content.trim() || !state.current) return;
  const cmid = (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random());
  pending.set(cmid, { conversation_id: state.current, content });
  send("send", { client_msg_id: cmid, conversation_id: state.current, content }); // if offline, resync resends it
  input.value = "";
  const li = document.createElement("li");
  li.className = "msg mine pending";
  li.dataset.cmid = cmid;
  li.textContent = content;
  $("message-list").appendChild(li);
  $("messages").scrollTop = $("messages").scrollHeight;
});

// ---- conversations and groups --------------------------------------------

async function convTitle(c) {
  if (c.type === "group") return c.name;
  const other = c.members.find((m) => m.user_id !== state.me.id) || c.members[0];
  const u = await user(other.user_id);
  return u.nickname + " @" + u.username;
}

async function renderConversations() {
  const list = [...state.convs.values()].sort((a, b) => {
    const ta = a.last_message ? a.last_message.created_at : a.created_at;
    const tb = b.last_message ? b.last_message.created_at : b.created_at;
    return tb.localeCompare(ta);
  });
  const items = await Promise.all(list.map(async (c) => {
    const li = document.createElement("li");
    li.dataset.id = c.id;
    li.className = c.id === state.current ? "active" : "";
    const title = document.createElement("span"); title.className = "title"; title.textContent = await convTitle(c);
    const preview = document.createElement("span"); preview.className = "preview";
    preview.textContent = c.last_message ? c.last_message.content : (c.type === "group" ? "Group created" : "No messages yet");
    li.append(title, preview);
    if (c.unread > 0) { const u = document.createElement("span"); u.className = "unread"; u.textContent = c.unread; li.append(u); }
    li.addEventListener("click", () => openConversation(c.id));
    return li;
  }));
  $("conversations").replaceChildren(...items);
}

async function openConversation(id) {
  state.current = id;
  $("members-panel").hidden = true;
  const c = state.convs.get(id);
  const have = state.msgs.get(id) || new Map();
  if (!state.hasOlder.has(id)) {
    // First open: the newest page (below whatever arrived live before).
    const below = have.size ? Math.min(...have.keys()) : c.max_seq + 1;
    const r = await api("GET", `/v1/conversations/${id}/messages?before_seq=${below}&limit=50`);
    for (const m of r.messages) addMessage(m);
    state.hasOlder.set(id, r.has_more);
  }
  if ((state.held.get(id) || 0) < c.max_seq) {
    send("sync", { conversation_id: id, after_seq: state.held.get(id) || 0 });
  }
  await renderChat();
  markRead();
  $("composer-text").focus();
}

async function renderChat() {
  const c = state.convs.get(state.current);
  $("composer").hidden = !c;
  $("btn-members").hidden = !c || c.type !== "group";
  $("chat-title").textContent = c ? await convTitle(c) : "No conversation open";
  if (!c) { $("message-list").replaceChildren(); $("members-panel").hidden = true; return; }
  await renderMessages();
  if (!$("members-panel").hidden) renderMembers();
  renderConversations();
  $("messages").scrollTop = $("messages").scrollHeight;
}

async function renderMessages() {
  const c = state.convs.get(state.current);
  if (!c) return;
  const box = $("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const msgs = [...(state.msgs.get(c.id) || new Map()).values()].sort((a, b) => a.seq - b.seq);
  const othersRead = Math.max(0, ...c.members.filter((m) => m.user_id !== state.me.id).map((m) => m.read_seq || 0));
  const items = await Promise.all(msgs.map(async (m) => {
    const li = document.createElement("li");
    const mine = m.sender_id === state.me.id;
    li.className = "msg" + (mine ? " mine" : "");
    li.dataset.seq = m.seq;
    const meta = document.createElement("div"); meta.className = "meta";
    const u = await user(m.sender_id);
    meta.textContent = `${u.nickname} · ${new Date(m.created_at).toLocaleTimeString()}`;
    const body = document.createElement("div"); body.className = "body"; body.textContent = m.content;
    li.append(meta, body);
    if (mine && m.seq <= othersRead) { const r = document.createElement("div"); r.className = "receipt"; r.textContent = "✓✓ read"; li.append(r); }
    return li;
  }));
  const stillPending = [...document.querySelectorAll("#message-list .pending")].filter((el) => pending.has(el.dataset.cmid));
  $("message-list").replaceChildren(...items, ...stillPending);
  $("btn-older").hidden = !state.hasOlder.get(c.id);
  if (atBottom) box.scrollTop = box.scrollHeight;
}

$("direct-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("side-error", null);
  try {
    const u = await userByName($("direct-username").value);
    const c = await api("POST", "/v1/conversations/direct", { user_id: u.id });
    mergeConversation(c);
    $("direct-username").value = "";
    await openConversation(c.id);
  } catch (e) { showError("side-error", e.status === 404 ? "No such user" : e); }
});

async function idsFor(names) {
  const out = [];
  for (const n of names.split(",").map((s) => s.trim()).filter(Boolean)) {
    try { out.push((await userByName(n)).id); } catch { throw new Error("No such user: " + n); }
  }
  return out;
}

$("group-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("side-error", null);
  try {
    const c = await api("POST", "/v1/groups", { name: $("group-name").value.trim(), member_ids: await idsFor($("group-members").value) });
    mergeConversation(c);
    $("group-name").value = ""; $("group-members").value = "";
    await openConversation(c.id);
  } catch (e) { showError("side-error", e); }
});

$("btn-members").addEventListener("click", () => {
  const p = $("members-panel");
  p.hidden = !p.hidden;
  if (!p.hidden) renderMembers();
});

async function renderMembers() {
  const c = state.convs.get(state.current);
  if (!c) return;
  const mine = c.members.find((m) => m.user_id === state.me.id);
  const canManage = mine && (mine.role === "owner" || mine.role === "admin");
  const items = await Promise.all(c.members.map(async (m) => {
    const li = document.createElement("li");
    const u = await user(m.user_id);
    const label = document.createElement("span");
    label.textContent = `${u.nickname} @${u.username} · ${m.role}`;
    li.append(label);
    if (canManage && m.user_id !== state.me.id && m.role !== "owner") {
      const b = document.createElement("button");
      b.className = "link"; b.textContent = "Remove";
      b.addEventListener("click", async () => {
        try { await api("DELETE", `/v1/groups/${c.id}/members/${m.user_id}`); await refreshConversation(c.id); renderMembers(); }
        catch (e) { showError("members-error", e); }
      });
      li.append(b);
    }
    return li;
  }));
  $("members-list").replaceChildren(...items);
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
  try {
    await api("POST", `/v1/groups/${state.current}/leave`);
    state.convs.delete(state.current);
    state.current = null;
    renderChat();
    renderConversations();
  } catch (e) { showError("members-error", e); }
});

if (state.token) start(); else $("auth").hidden = false;
