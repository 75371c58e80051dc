// The coordsvc dashboard: polls this node's JSON endpoints and renders them.
// Read-only: every request is a GET. Keys and values come from users, so they are only
// ever set as textContent (never as HTML).
"use strict";

const KEY_STORE = "coordsvc-admin-secret";
let lastEvent = 0;
let events = [];
const MAX_EVENTS = 200;

function $(id) { return document.getElementById(id); }

function secret() { return sessionStorage.getItem(KEY_STORE); }

async function get(path) {
  const headers = {};
  const s = secret();
  if (s) headers["X-Coord-Admin-Key"] = s;
  const r = await fetch(path, { headers, cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function bytes(n) {
  if (typeof n !== "number") return null;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function decode(b64) {
  try {
    const raw = atob(b64);
    const arr = Uint8Array.from(raw, c => c.charCodeAt(0));
    return new TextDecoder("utf-8", { fatal: false }).decode(arr);
  } catch (e) { return "(undecodable)"; }
}

function valueCell(tr, row, admin) {
  if (!admin) { cell(tr, "hidden", "hidden-value"); return; }
  if (row.value_b64 === undefined) { cell(tr, "", "value"); return; }
  cell(tr, decode(row.value_b64) + (row.truncated ? " …" : ""), "value");
}

function renderCluster(st) {
  const c = st.cluster || {};
  $("cluster-name").textContent = c.name || "";
  $("cluster-leader").textContent = c.leader || "none";
  const q = $("quorum");
  q.textContent = c.quorum ? "quorum yes" : "quorum NO";
  q.className = "pill " + (c.quorum ? "ok" : "bad");
  $("healthy").textContent = (c.healthy ?? "?") + "/" + (c.members ?? "?");
  $("commit").textContent = c.commit_index ?? "?";
  $("revision").textContent = c.revision ?? "?";
  $("security").textContent = c.security || "security ?";
  $("security").className = "pill " + (c.security === "curve" ? "ok" : "bad");
  const body = $("nodes").querySelector("tbody");
  body.replaceChildren();
  for (const n of st.nodes || []) {
    const tr = document.createElement("tr");
    tr.dataset.node = n.id;
    if (n.role === "leader") tr.classList.add("leader");
    if (!n.reachable) tr.classList.add("down");
    cell(tr, n.id);
    cell(tr, n.address);
    const td = cell(tr, "");
    if (typeof n.http === "string" && n.http.startsWith("http://")) {
      const a = document.createElement("a");
      a.href = n.http + "/";
      a.textContent = n.http;
      td.appendChild(a);
    }
    cell(tr, n.reachable ? n.role : "unreachable");
    cell(tr, n.leader);
    cell(tr, Array.isArray(n.ballot) ? "[" + n.ballot.join(", ") + "]" : null);
    cell(tr, n.commit_index, "num");
    cell(tr, n.applied_index, "num");
    cell(tr, n.lag, "num");
    cell(tr, typeof n.last_leader_contact_ms === "number" ? n.last_leader_contact_ms + " ms" : null, "num");
    cell(tr, bytes(n.db_bytes), "num");
    cell(tr, n.sessions, "num");
    cell(tr, n.locks_held, "num");
    cell(tr, n.keys, "num");
    body.appendChild(tr);
  }
  $("error").textContent = st.error ? "cluster status: " + st.error : "";
}

function renderState(s) {
  if (!s.available) return;
  const locks = $("locks").querySelector("tbody");
  locks.replaceChildren();
  for (const l of s.locks) {
    const tr = document.createElement("tr");
    tr.dataset.lock = l.name;
    cell(tr, l.name);
    cell(tr, l.holder_session, "num");
    cell(tr, l.token, "num");
    cell(tr, l.waiters.length ? l.waiters.join(", ") : "none");
    locks.appendChild(tr);
  }
  $("lock-count").textContent = "(" + s.lock_count + " held, at index " + s.applied_index + ")";
  const keys = $("keys").querySelector("tbody");
  keys.replaceChildren();
  for (const k of s.keys) {
    const tr = document.createElement("tr");
    tr.dataset.key = k.key;
    cell(tr, k.key);
    cell(tr, k.revision, "num");
    cell(tr, k.version, "num");
    cell(tr, k.bytes, "num");
    valueCell(tr, k, s.admin);
    keys.appendChild(tr);
  }
  $("key-count").textContent = s.keys_listed
    ? "(" + s.key_count + " keys" + (s.key_count > s.keys.length ? ", first " + s.keys.length + " shown" : "") + ")"
    : "(" + s.key_count + " keys: too many to list here; use coordctl config list)";
}

function renderEvents(e) {
  $("events-node").textContent = e.node;
  for (const ev of e.events) {
    if (ev.revision > lastEvent) lastEvent = ev.revision;
    events.unshift(ev);
  }
  events = events.slice(0, MAX_EVENTS);
  const box = $("events");
  box.replaceChildren();
  for (const ev of events) {
    const div = document.createElement("div");
    div.className = "event";
    div.dataset.revision = ev.revision;
    let text = "rev " + ev.revision + "  " + ev.type.padEnd(6) + " " + ev.key;
    if (ev.type === "put") {
      text += ev.value_b64 !== undefined ? " = " + decode(ev.value_b64) + (ev.truncated ? " …" : "")
                                         : "  (" + ev.bytes + " bytes, value hidden)";
    }
    div.textContent = text;
    box.appendChild(div);
  }
}

async function refresh() {
  try {
    const [cl, st, ev] = await Promise.all([
      get("/api/cluster"), get("/api/state"), get("/api/events?after=" + lastEvent)]);
    renderCluster(cl);
    renderState(st);
    renderEvents(ev);
    showAdmin(st.admin);
    document.body.dataset.loaded = "yes";
  } catch (e) {
    $("error").textContent = String(e);
  }
}

function showAdmin(admin) {
  if (!$("admin-status")) return;
  $("admin-status").textContent = admin
    ? "Values are shown: this tab presents the admin key to node " + $("this-node").textContent + "."
    : "Values are hidden. Paste the cluster's admin.key (or its secret key) to see them; it is sent to this node only, in a request header, and kept in this tab until it closes.";
  document.body.dataset.admin = admin ? "yes" : "no";
}

async function unlock() {
  const text = $("admin-key").value;
  const m = text.match(/secret\s*=\s*"([^"]{40})"/) || text.trim().match(/^(\S{40})$/);
  $("admin-key").value = "";
  if (!m) { $("admin-status").textContent = "That is not a key file: expected secret = \"...\" (40 characters)."; return; }
  sessionStorage.setItem(KEY_STORE, m[1]);
  const who = await get("/api/whoami");
  if (!who.admin) {
    sessionStorage.removeItem(KEY_STORE);
    $("admin-status").textContent = "This node does not accept that key as the cluster's admin key.";
    document.body.dataset.admin = "refused";
    return;
  }
  events = []; lastEvent = 0;
  await refresh();
}

function forget() {
  sessionStorage.removeItem(KEY_STORE);
  events = []; lastEvent = 0;
  refresh();
}

async function start() {
  const me = await get("/api/whoami").catch(() => null);
  if (me) $("this-node").textContent = me.node;
  $("admin-unlock").addEventListener("click", unlock);
  $("admin-forget").addEventListener("click", forget);
  if (me && !me.secure) {
    $("admin").textContent = "This cluster is insecure (no keys): there is no admin key to check, so values are never shown here.";
  }
  const loop = async () => { await refresh(); setTimeout(loop, 1000); };
  loop();
}

start();
