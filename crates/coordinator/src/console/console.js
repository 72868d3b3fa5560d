// The coordinator console. Plain JavaScript, no framework, no build step.
//
// Everything shown comes from the JSON API (/api/admin, documented in the
// coordinator's src/api/admin.rs and the README) fetched with the bearer
// token the user typed, kept in sessionStorage (this tab only) and sent as
// a header, never in a URL.
//
// Rule of this file: data from the server is only ever written with
// textContent or as an attribute value (el() below). Nothing here assigns
// innerHTML, so a gid or payload such as <img src=x onerror=...> is text.
"use strict";

const TOKEN_KEY = "coordinator-console-token";
const REFRESH_MS = 3000;
const PAGE_SIZE = 50;
const STATUSES = ["prepared", "submitted", "aborting", "succeed", "failed"];
const TYPES = ["saga", "tcc", "msg", "xa", "workflow"];

let refreshTimer = null;

// ---------------------------------------------------------------------------
// DOM helpers: the only way this file creates elements.

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "onclick") node.addEventListener("click", value);
    else if (key === "onchange") node.addEventListener("change", value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

function time(value) {
  if (!value) return "";
  const date = typeof value === "number" ? new Date(value) : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toISOString().replace("T", " ").replace("Z", " UTC");
}

// ---------------------------------------------------------------------------
// The API.

class Unauthorized extends Error {}

async function api(path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const init = { headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) throw new Unauthorized();
  let json = null;
  try { json = await response.json(); } catch (_) { json = null; }
  if (!response.ok) {
    const message = json && json.message ? json.message : "HTTP " + response.status;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return json;
}

// ---------------------------------------------------------------------------
// Login.

function showLogin(message) {
  stopRefresh();
  document.getElementById("main").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
  document.getElementById("token").focus();
}

function hideLogin() {
  document.getElementById("login").hidden = true;
  document.getElementById("main").hidden = false;
}

async function checkLogin() {
  try {
    const who = await api("/api/admin/whoami");
    hideLogin();
    document.getElementById("who").textContent = who.auth ? "signed in with the token" : "no AuthToken configured";
    document.getElementById("logout").hidden = !who.auth;
    return true;
  } catch (error) {
    if (error instanceof Unauthorized) {
      showLogin(sessionStorage.getItem(TOKEN_KEY) ? "wrong token" : "");
      return false;
    }
    throw error;
  }
}

// ---------------------------------------------------------------------------
// Routing: #/ is the list, #/t/<gid> one transaction.

function stopRefresh() {
  if (refreshTimer) clearInterval(refreshTimer);
  refreshTimer = null;
}

async function route() {
  stopRefresh();
  if (!(await checkLogin())) return;
  const hash = location.hash || "#/";
  const main = clear(document.getElementById("main"));
  try {
    if (hash.startsWith("#/t/")) await showTransaction(main, decodeURIComponent(hash.slice(4)));
    else await showList(main);
  } catch (error) {
    if (error instanceof Unauthorized) showLogin("wrong token");
    else main.append(el("p", { class: "error", id: "page-error", text: error.message }));
  }
}

// ---------------------------------------------------------------------------
// The list.

const listState = { status: "", transType: "", gidPrefix: "", from: "", to: "", auto: true };

function listQuery(position) {
  const params = new URLSearchParams();
  if (listState.status) params.set("status", listState.status);
  if (listState.transType) params.set("transType", listState.transType);
  if (listState.gidPrefix) params.set("gidPrefix", listState.gidPrefix);
  if (listState.from) params.set("createTimeStart", String(Date.parse(listState.from + "Z")));
  if (listState.to) params.set("createTimeEnd", String(Date.parse(listState.to + "Z")));
  if (position) params.set("position", position);
  params.set("limit", String(PAGE_SIZE));
  return "/api/admin/transactions?" + params.toString();
}

function select(id, label, options, value) {
  const node = el("select", { id });
  node.append(el("option", { value: "", text: "any" }));
  for (const option of options) node.append(el("option", { value: option, text: option, selected: option === value }));
  return el("label", {}, label, node);
}

async function showList(main) {
  main.append(el("h1", { text: "Transactions" }));
  const counts = el("div", { class: "counts", id: "counts" });
  main.append(counts);

  const filters = el("form", { class: "filters", id: "filters" },
    select("f-status", "status", STATUSES, listState.status),
    select("f-type", "type", TYPES, listState.transType),
    el("label", {}, "gid prefix", el("input", { id: "f-gid", value: listState.gidPrefix, size: 24 })),
    el("label", {}, "created from (UTC)", el("input", { id: "f-from", type: "datetime-local", step: 1, value: listState.from })),
    el("label", {}, "to (UTC)", el("input", { id: "f-to", type: "datetime-local", step: 1, value: listState.to })),
    el("button", { type: "submit", id: "f-apply", text: "filter" }),
    el("label", {}, "auto-refresh", el("input", { id: "f-auto", type: "checkbox", checked: listState.auto })),
  );
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    listState.status = document.getElementById("f-status").value;
    listState.transType = document.getElementById("f-type").value;
    listState.gidPrefix = document.getElementById("f-gid").value.trim();
    listState.from = document.getElementById("f-from").value;
    listState.to = document.getElementById("f-to").value;
    route();
  });
  main.append(filters);

  const body = el("tbody", { id: "rows" });
  main.append(el("table", { id: "list" },
    el("thead", {}, el("tr", {}, ...["gid", "type", "status", "created", "updated", "next run"].map((h) => el("th", { text: h })))),
    body));
  const more = el("button", { type: "button", id: "more", text: "older…", hidden: true });
  main.append(el("p", {}, more));

  let position = "";
  async function page(append) {
    const result = await api(listQuery(append ? position : ""));
    if (!append) clear(body);
    for (const t of result.transactions) body.append(row(t));
    position = result.next_position;
    more.hidden = !position;
    if (!append && result.transactions.length === 0) {
      body.append(el("tr", {}, el("td", { colspan: 6, class: "note", text: "no transaction matches" })));
    }
  }
  more.addEventListener("click", () => page(true).catch(report));

  async function refresh() {
    await Promise.all([showCounts(counts), page(false)]);
  }
  await refresh();
  document.getElementById("f-auto").addEventListener("change", (event) => {
    listState.auto = event.target.checked;
    stopRefresh();
    if (listState.auto) refreshTimer = setInterval(() => refresh().catch(report), REFRESH_MS);
  });
  if (listState.auto) refreshTimer = setInterval(() => refresh().catch(report), REFRESH_MS);
}

function row(t) {
  return el("tr", { class: "trans" },
    el("td", { class: "mono" }, el("a", { href: "#/t/" + encodeURIComponent(t.gid), class: "gid", text: t.gid })),
    el("td", { text: t.trans_type }),
    el("td", { class: "status-" + t.status, text: t.status }),
    el("td", { text: time(t.create_time) }),
    el("td", { text: time(t.update_time) }),
    el("td", { text: STATUSES.indexOf(t.status) < 3 ? time(t.next_cron_time) : "" }));
}

async function showCounts(node) {
  const result = await api("/api/admin/counts");
  clear(node);
  for (const status of STATUSES) {
    const n = result.counts[status] || 0;
    node.append(el("span", {
      class: "count", id: "count-" + status, text: status + " " + n,
      onclick: () => { listState.status = status; route(); },
    }));
  }
}

function report(error) {
  if (error instanceof Unauthorized) { showLogin("wrong token"); return; }
  const message = document.getElementById("message") || document.getElementById("main");
  message.append(el("p", { class: "error", text: error.message }));
}

// ---------------------------------------------------------------------------
// One transaction.

async function showTransaction(main, gid) {
  const view = await api("/api/admin/transaction?gid=" + encodeURIComponent(gid));
  renderTransaction(main, view);
  if (!isFinal(view.transaction.status)) {
    refreshTimer = setInterval(async () => {
      try {
        const next = await api("/api/admin/transaction?gid=" + encodeURIComponent(gid));
        renderTransaction(clear(main), next);
        if (isFinal(next.transaction.status)) stopRefresh();
      } catch (error) { report(error); }
    }, REFRESH_MS);
  }
}

function isFinal(status) {
  return status === "succeed" || status === "failed";
}

function renderTransaction(main, view) {
  const t = view.transaction;
  main.append(el("p", {}, el("a", { href: "#/", text: "← all transactions" })));
  main.append(el("h1", { id: "gid", text: t.gid }));
  main.append(el("dl", { class: "kv" },
    el("dt", { text: "status" }), el("dd", { id: "status", class: "status-" + t.status, text: t.status }),
    el("dt", { text: "type" }), el("dd", { text: t.trans_type }),
    el("dt", { text: "protocol" }), el("dd", { text: t.protocol }),
    el("dt", { text: "created" }), el("dd", { text: time(t.create_time) }),
    el("dt", { text: "updated" }), el("dd", { text: time(t.update_time) }),
    el("dt", { text: "finished" }), el("dd", { text: time(t.finish_time || t.rollback_time) }),
    el("dt", { text: "next retry" }), el("dd", { id: "next-retry", text: view.next_retry_time ? time(view.next_retry_time) + (view.running ? " (a pass is running)" : "") : "—" }),
    el("dt", { text: "retry interval" }), el("dd", { text: t.next_cron_interval + " s" }),
    el("dt", { text: "rollback reason" }), el("dd", { id: "rollback-reason", text: t.rollback_reason }),
  ));

  main.append(el("div", { id: "message" }));
  if (!isFinal(t.status)) {
    main.append(el("div", { class: "actions" },
      el("button", { type: "button", id: "retry-now", text: "retry now", onclick: () => act("retry", t.gid, "Retry " + t.gid + " now? Its next pass starts at once.") }),
      el("button", { type: "button", id: "force-stop", class: "danger", text: "force stop", onclick: () => act("forceStop", t.gid, "Force stop " + t.gid + "? It becomes failed WITHOUT compensation: branches that succeeded stay in force.") }),
    ));
  }

  main.append(el("h2", { text: "Options" }), el("pre", { id: "options", text: JSON.stringify(view.options, null, 2) }));
  if (view.custom_data.size > 0) main.append(el("h2", { text: "Custom data" }), payload(view.custom_data));

  main.append(el("h2", { text: "Branches" }));
  const branches = el("tbody", { id: "branches" });
  for (const b of view.branches) {
    branches.append(el("tr", {},
      el("td", { text: b.branch_id }), el("td", { text: b.op }),
      el("td", { class: "status-" + (b.status === "prepared" ? "prepared" : b.status), text: b.status }),
      el("td", { class: "mono", text: b.url }),
      el("td", {}, payload(b.payload)),
      el("td", { text: time(b.finish_time) })));
  }
  main.append(el("table", {}, el("thead", {}, el("tr", {}, ...["branch", "op", "status", "url", "payload", "finished"].map((h) => el("th", { text: h })))), branches));

  main.append(el("h2", { text: "Timeline" }));
  // Why the timeline is empty, in the coordinator's own terms (AttemptsRecord).
  const unrecorded = (v) => v.recording === "off" ? "no recorded branch call: recording is off (AttemptsRecord: off)"
    : v.recording === "troubled" && v.transaction.status === "succeed" ? "every branch call succeeded at once: such calls are not recorded (AttemptsRecord: troubled); the ops above show when each finished"
    : "no recorded branch call yet";
  const attempts = el("tbody", { id: "timeline" });
  for (const a of view.attempts) {
    attempts.append(el("tr", { class: "attempt" },
      el("td", { text: time(a.start_ms) }),
      el("td", { text: a.branch_id + " " + a.op }),
      el("td", { class: "result-" + a.result, text: a.result === "success" ? "success" : a.result.toUpperCase() }),
      el("td", { class: "mono", text: a.error }),
      el("td", { text: a.latency_ms + " ms" }),
      el("td", { text: a.retry === 0 ? "first call" : "retry " + a.retry })));
  }
  if (view.next_retry_time) {
    attempts.append(el("tr", { class: "next" }, el("td", { text: time(view.next_retry_time) }), el("td", { colspan: 5, class: "note", text: view.running ? "a pass holds the transaction until then" : "next retry" })));
  }
  if (view.attempts.length === 0) attempts.append(el("tr", {}, el("td", { colspan: 6, class: "note", text: unrecorded(view) })));
  main.append(el("table", {}, el("thead", {}, el("tr", {}, ...["when", "branch", "result", "answer", "latency", "retry"].map((h) => el("th", { text: h })))), attempts));

  if (view.services && view.services.length) renderServices(main, view.services);
}

function payload(p) {
  if (p.kind === "empty") return el("span", { class: "note", text: "empty" });
  return el("div", {}, el("span", { class: "note", text: p.kind + ", " + p.size + " bytes" + (p.kind === "binary" ? " (hex)" : "") }), el("pre", { class: "payload", text: p.shown }));
}

function renderServices(main, services) {
  main.append(el("h2", { text: "In the services' databases" }));
  for (const service of services) {
    main.append(el("h2", { class: "service", text: service.name + " (" + service.url + ")" }));
    if (service.error) { main.append(el("p", { class: "error", text: service.error })); continue; }
    for (const table of service.tables) {
      main.append(el("p", { class: "note", text: table.name }));
      const head = el("tr", {}, ...table.columns.map((c) => el("th", { text: c })));
      const body = el("tbody", {}, ...table.rows.map((r) => el("tr", {}, ...r.map((v) => el("td", { class: "mono", text: v === null ? "NULL" : String(v) })))));
      main.append(el("table", { class: "service-table" }, el("thead", {}, head), body));
    }
  }
}

function act(action, gid, question) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = question;
  dialog.returnValue = "";
  dialog.onclose = async () => {
    if (dialog.returnValue !== "ok") return;
    const message = clear(document.getElementById("message"));
    try {
      await api("/api/admin/" + action, { gid });
      message.append(el("p", { id: "action-done", text: (action === "retry" ? "retry requested" : "force stopped") }));
      route();
    } catch (error) {
      if (error instanceof Unauthorized) { showLogin("wrong token"); return; }
      message.append(el("p", { class: "error", id: "action-error", text: error.message }));
    }
  };
  dialog.showModal();
}

// ---------------------------------------------------------------------------
// Start.

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value);
    document.getElementById("token").value = "";
    route();
  });
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-ok").addEventListener("click", () => dialog.close("ok"));
  document.getElementById("confirm-cancel").addEventListener("click", () => dialog.close("cancel"));
  document.getElementById("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    route();
  });
  window.addEventListener("hashchange", route);
  route();
});
