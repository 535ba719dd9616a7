// Baton's web UI: one page, hash routing, four views. It talks only to the node that served it:
//   #/cluster        every member's role, term and indexes (GET /api/cluster/nodes), polled every second
//   #/workflows      search with filters and paging (GET /api/workflow/search)
//   #/workflow/<id>  one execution: the definition's shape coloured by task status, and every task attempt
//   #/definitions    workflow and task definitions; a form per workflow definition starts a run
// Everything inserted into the DOM goes through esc(): workflow inputs, outputs and names are user data.
"use strict";

// ------------------------------------------------------------------------------------------------ helpers

/** Text made safe to place in HTML, inside elements or quoted attributes. */
function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

/** An error answered by the node, with Conductor's message when there is one. */
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Calls the node; answers parsed JSON, text, or throws ApiError (status 0 when the node did not answer). */
async function api(path, options = {}) {
  let resp;
  try {
    const headers = { accept: "application/json" };
    if (options.body !== undefined) headers["content-type"] = "application/json";
    resp = await fetch(path, { ...options, headers, cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, "this node is not answering");
  }
  const text = await resp.text();
  if (!resp.ok) {
    let message = text || resp.statusText;
    try {
      message = JSON.parse(text).message || message;
    } catch (_) {
      // not JSON: keep the text
    }
    throw new ApiError(resp.status, `HTTP ${resp.status}: ${message}`);
  }
  const type = resp.headers.get("content-type") || "";
  return type.includes("json") && text ? JSON.parse(text) : text;
}

const pad = (n, width = 2) => String(n).padStart(width, "0");

/** ms since the epoch as local `YYYY-MM-DD HH:MM:SS.mmm`; a dash for 0 or absent. */
function fmtTime(ms) {
  if (!ms) return "–";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** The time of day in a cell whose tooltip has the whole date; a dash for 0 or absent. */
function fmtCellTime(ms) {
  if (!ms) return "–";
  return `<span title="${esc(fmtTime(ms))}">${esc(fmtClock(ms))}</span>`;
}

/** Only the time of day, for the change log and table cells. */
function fmtClock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** A duration in ms for people: 850 ms, 2.4 s, 3 m 05 s, 1 h 02 m. */
function fmtDuration(ms) {
  if (ms === null || ms === undefined || ms < 0) return "–";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.floor(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)} m ${pad(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${pad(Math.floor((s % 3600) / 60))} m`;
}

/** From `start` to `end`, or to now while it runs. */
function span(start, end) {
  if (!start) return "–";
  return fmtDuration((end || Date.now()) - start);
}

function badge(status) {
  return `<span class="badge st-${esc(status)}">${esc(String(status).replace(/_/g, " "))}</span>`;
}

function compactJson(value) {
  const text = JSON.stringify(value ?? {});
  return text.length > 90 ? `${text.slice(0, 87)}…` : text;
}

/** A JSON value as a collapsed preview that opens to the pretty-printed whole. `key` keeps it open across refreshes. */
function jsonDetails(value, key) {
  const empty = value === undefined || value === null || (typeof value === "object" && Object.keys(value).length === 0);
  if (empty) return `<span class="muted">{}</span>`;
  const open = openDetails.has(key) ? " open" : "";
  return `<details class="json" data-key="${esc(key)}"${open}><summary><code>${esc(compactJson(value))}</code></summary>` +
    `<pre>${esc(JSON.stringify(value, null, 2))}</pre></details>`;
}

/** Keys of the JSON previews the user opened, so a refresh keeps them open. */
const openDetails = new Set();
document.addEventListener("toggle", (e) => {
  const key = e.target?.dataset?.key;
  if (!key) return;
  if (e.target.open) openDetails.add(key);
  else openDetails.delete(key);
}, true);

/** A banner for an error, or nothing. */
function errorBanner(error) {
  return error ? `<div class="banner error" role="alert">${esc(error.message || error)}</div>` : "";
}

// ------------------------------------------------------------------------------------------------ routing

/** Bumped on every navigation; a poll that belongs to an older view stops. */
let session = 0;

/** Runs `fn` now and then every `intervalMs` after it finishes, for as long as the view it belongs to is shown
 *  and `fn` does not answer false. */
function poll(intervalMs, fn) {
  const mine = session;
  const tick = async () => {
    if (mine !== session) return;
    let again = true;
    try {
      again = (await fn(() => mine === session)) !== false;
    } catch (e) {
      console.error(e);
    }
    if (again && mine === session) setTimeout(tick, intervalMs);
  };
  tick();
}

const routes = [
  [/^#\/cluster$/, viewCluster, "cluster"],
  [/^#\/workflows(?:\?(.*))?$/, viewWorkflows, "workflows"],
  [/^#\/workflow\/([^/?]+)$/, viewWorkflow, "workflows"],
  [/^#\/definitions$/, viewDefinitions, "definitions"],
];

function route() {
  session += 1;
  const hash = location.hash || "#/cluster";
  const view = document.getElementById("view");
  for (const [pattern, render, nav] of routes) {
    const m = hash.match(pattern);
    if (!m) continue;
    for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === nav);
    view.dataset.view = nav;
    render(view, m[1] === undefined ? undefined : decodeURIComponent(m[1]));
    return;
  }
  location.replace("#/cluster");
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  route();
  watchHere();
});

// ------------------------------------------------------------------------------------------------ header

/** What the last good /api/cluster/status said: this node and the members, to offer another node if it dies. */
let lastHere = null;

/** The header's "you are looking at node N" line, refreshed every two seconds whatever the view (and every second
 *  by the cluster view). */
function watchHere() {
  const tick = async () => {
    try {
      renderHere(await api("/api/cluster/status"));
    } catch (e) {
      renderHereDown();
    }
    setTimeout(tick, 2000);
  };
  tick();
}

function renderHere(s) {
  lastHere = s;
  const here = document.getElementById("here");
  const leader = s.leader_id ? `leader node ${s.leader_id}` : "no leader";
  here.className = "here";
  here.dataset.nodeId = s.node_id;
  here.innerHTML = `Viewing <strong>node ${esc(s.node_id)}</strong> <span class="role role-${esc(s.role)}">${esc(s.role)}</span>` +
    `<span class="muted">· ${esc(leader)} · cluster ${esc(s.cluster_id)}</span>`;
}

/** This node stopped answering: say so, and offer the other members' UIs. */
function renderHereDown() {
  const here = document.getElementById("here");
  here.className = "here down";
  const others = (lastHere?.members || []).filter((m) => m.id !== lastHere.node_id);
  const links = others.map((m) => `<a href="${esc(nodeUrl(m.http_addr))}">node ${esc(m.id)}</a>`).join(" ");
  here.innerHTML = `node ${esc(lastHere?.node_id ?? "?")} is not answering${links ? ` · open ${links}` : ""}`;
}

/** The UI of the node at `httpAddr`, at the current view. */
function nodeUrl(httpAddr) {
  return `${location.protocol}//${httpAddr}/${location.hash || "#/cluster"}`;
}

// ------------------------------------------------------------------------------------------------ cluster

/** What the cluster view remembers between polls (and across navigation): the leader and the members down. */
const clusterMemory = { leaderKey: null, down: new Set(), events: [], lastSeen: new Map() };

function remember(text) {
  clusterMemory.events.unshift({ at: Date.now(), text });
  clusterMemory.events.length = Math.min(clusterMemory.events.length, 12);
}

function viewCluster(view) {
  view.innerHTML = `
    <div class="page-head"><h1>Cluster</h1><span class="muted small" id="cluster-updated"></span></div>
    <div id="cluster-error"></div>
    <div id="cluster-summary" class="summary" data-testid="cluster-summary">Asking every member…</div>
    <div id="members" class="members" data-testid="members"></div>
    <h2>Changes seen</h2>
    <ol id="cluster-events" class="events" data-testid="cluster-events"></ol>`;
  poll(1000, async (live) => {
    let data;
    try {
      data = await api("/api/cluster/nodes");
    } catch (e) {
      if (!live()) return;
      document.getElementById("cluster-error").innerHTML = errorBanner(e);
      if (e.status === 0) renderHereDown();
      return;
    }
    if (!live()) return;
    document.getElementById("cluster-error").innerHTML = "";
    renderCluster(data);
    const own = data.nodes.find((n) => n.id === data.node_id);
    if (own?.status) renderHere(own.status);
  });
}

function renderCluster(data) {
  const up = data.nodes.filter((n) => n.status);
  const leaders = up.filter((n) => n.status.role === "leader").sort((a, b) => b.status.term - a.status.term);
  const leader = leaders[0];
  const term = Math.max(0, ...up.map((n) => n.status.term));
  const maxCommitted = Math.max(0, ...up.map((n) => n.status.committed_index));

  const leaderKey = leader ? `${leader.id}@${leader.status.term}` : "none";
  if (leaderKey !== clusterMemory.leaderKey) {
    remember(leader ? `node ${leader.id} is leader (term ${leader.status.term})` : "no leader");
    clusterMemory.leaderKey = leaderKey;
  }
  for (const n of data.nodes) {
    if (n.status) clusterMemory.lastSeen.set(n.id, { at: Date.now(), role: n.status.role, term: n.status.term });
    const wasDown = clusterMemory.down.has(n.id);
    if (!n.status && !wasDown) {
      clusterMemory.down.add(n.id);
      remember(`node ${n.id} stopped answering (${n.error})`);
    } else if (n.status && wasDown) {
      clusterMemory.down.delete(n.id);
      remember(`node ${n.id} answers again`);
    }
  }

  const leaderText = leader
    ? `Leader <strong data-testid="leader-id">node ${esc(leader.id)}</strong>`
    : `<strong class="warn">No leader</strong>`;
  document.getElementById("cluster-summary").innerHTML =
    `${leaderText} <span class="sep">·</span> term <strong>${esc(term)}</strong> <span class="sep">·</span> ` +
    `<strong>${up.length}</strong> of ${data.nodes.length} members answering <span class="sep">·</span> ` +
    `cluster <strong>${esc(data.cluster_id)}</strong> <span class="sep">·</span> ` +
    `you are looking at <strong data-testid="answering-node">node ${esc(data.node_id)}</strong>`;

  document.getElementById("members").innerHTML = data.nodes.map((n) => memberCard(n, data.node_id, maxCommitted)).join("");
  document.getElementById("cluster-events").innerHTML = clusterMemory.events
    .map((e) => `<li><time>${esc(fmtClock(e.at))}</time> ${esc(e.text)}</li>`).join("");
  document.getElementById("cluster-updated").textContent = `updated ${fmtClock(Date.now())}`;
}

function memberCard(n, hereId, maxCommitted) {
  const here = n.id === hereId;
  const hereChip = here ? `<span class="chip here-chip" data-testid="you-are-here">you are here</span>` : "";
  const link = here ? "" : `<a class="small" href="${esc(nodeUrl(n.http_addr))}">open its UI</a>`;
  if (!n.status) {
    const seen = clusterMemory.lastSeen.get(n.id);
    const last = seen ? `last answered at ${fmtClock(seen.at)} as ${seen.role} in term ${seen.term}` : "not seen since this page opened";
    return `
      <article class="member down${here ? " is-here" : ""}" data-testid="member-card" data-node-id="${esc(n.id)}" data-role="unreachable" data-reachable="false">
        <header><h3>Node ${esc(n.id)}</h3><span class="role role-down">unreachable</span>${hereChip}</header>
        <p class="down-reason">Not answering: ${esc(n.error || "no reply")}</p>
        <p class="muted small">${esc(last)}</p>
        <footer><span>gRPC ${esc(n.grpc_addr)}</span><span>HTTP ${esc(n.http_addr)}</span>${link}</footer>
      </article>`;
  }
  const s = n.status;
  const behind = maxCommitted - s.last_applied;
  const sync = behind > 0
    ? `<span class="lag">${esc(behind)} behind</span>`
    : `<span class="in-sync">in sync</span>`;
  const stat = (label, value, testid) =>
    `<div><dt>${esc(label)}</dt><dd${testid ? ` data-testid="${esc(testid)}"` : ""}>${esc(value)}</dd></div>`;
  return `
    <article class="member${s.role === "leader" ? " leader" : ""}${here ? " is-here" : ""}" data-testid="member-card"
             data-node-id="${esc(n.id)}" data-role="${esc(s.role)}" data-reachable="true">
      <header><h3>Node ${esc(n.id)}</h3><span class="role role-${esc(s.role)}">${esc(s.role)}</span>${hereChip}</header>
      <dl class="stats">
        ${stat("Term", s.term, "term")}
        ${stat("Leader", s.leader_id ? `node ${s.leader_id}` : "–", "leader")}
        ${stat("Last log", s.last_log_index, "last-log-index")}
        ${stat("Committed", s.committed_index, "committed-index")}
        ${stat("Applied", s.last_applied, "last-applied")}
        ${stat("Snapshot", s.snapshot_index, "snapshot-index")}
      </dl>
      <div class="member-line">${sync}<span class="muted">state <code title="${esc(s.state_hash)}">${esc(s.state_hash.slice(0, 12))}</code></span>
        <span class="muted">pid ${esc(s.pid)}</span></div>
      <footer><span>gRPC ${esc(n.grpc_addr)}</span><span>HTTP ${esc(n.http_addr)}</span>${link}</footer>
    </article>`;
}

// ------------------------------------------------------------------------------------------------ workflow list

const STATUSES = ["RUNNING", "COMPLETED", "FAILED", "TIMED_OUT", "TERMINATED", "PAUSED"];
const PAGE_SIZE = 25;

/** A value quoted for the search query. */
function quote(value) {
  return value.includes("'") ? `"${value}"` : `'${value}'`;
}

function viewWorkflows(view, query) {
  const params = new URLSearchParams(query || "");
  const filters = {
    status: params.get("status") || "",
    type: params.get("type") || "",
    correlationId: params.get("correlationId") || "",
    text: params.get("text") || "",
  };
  const start = Math.max(0, parseInt(params.get("start") || "0", 10) || 0);
  const statusOptions = STATUSES.map((s) => `<option${s === filters.status ? " selected" : ""}>${esc(s)}</option>`).join("");
  view.innerHTML = `
    <div class="page-head"><h1>Workflows</h1><span class="muted small" id="list-updated"></span></div>
    <form id="wf-filters" class="filters" data-testid="workflow-filters">
      <label>Status<select name="status" data-testid="filter-status"><option value="">any</option>${statusOptions}</select></label>
      <label>Type<input name="type" list="wf-types" value="${esc(filters.type)}" placeholder="any" data-testid="filter-type"></label>
      <label>Correlation id<input name="correlationId" value="${esc(filters.correlationId)}" data-testid="filter-correlation"></label>
      <label class="grow">Free text<input name="text" value="${esc(filters.text)}" placeholder="id, type, input or output contains…" data-testid="filter-text"></label>
      <div class="buttons"><button type="submit" class="primary">Search</button><button type="button" id="wf-clear">Clear</button></div>
      <datalist id="wf-types"></datalist>
    </form>
    <div id="list-error"></div>
    <div class="toolbar"><span id="list-count" data-testid="workflow-count"></span>
      <span class="pager"><button type="button" id="page-prev">‹ Newer</button><button type="button" id="page-next">Older ›</button></span></div>
    <table class="grid" data-testid="workflow-table">
      <thead><tr><th>Workflow</th><th>Status</th><th>Correlation id</th><th>Started</th><th>Ended</th><th>Duration</th></tr></thead>
      <tbody id="wf-rows"><tr><td colspan="6" class="muted">Searching…</td></tr></tbody>
    </table>`;

  const go = (changes) => {
    const next = new URLSearchParams();
    const merged = { ...filters, start: String(start), ...changes };
    for (const [k, v] of Object.entries(merged)) if (v && v !== "0") next.set(k, v);
    const qs = next.toString();
    location.hash = qs ? `#/workflows?${qs}` : "#/workflows";
  };
  const form = document.getElementById("wf-filters");
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const f = new FormData(form);
    go({ status: f.get("status"), type: f.get("type").trim(), correlationId: f.get("correlationId").trim(), text: f.get("text").trim(), start: "0" });
  });
  document.getElementById("wf-clear").addEventListener("click", () => { location.hash = "#/workflows"; });

  api("/api/metadata/workflow").then((defs) => {
    const names = [...new Set(defs.map((d) => d.name))].sort();
    const list = document.getElementById("wf-types");
    if (list) list.innerHTML = names.map((n) => `<option value="${esc(n)}">`).join("");
  }).catch(() => {});

  const clauses = [];
  if (filters.status) clauses.push(`status = ${filters.status}`);
  if (filters.type) clauses.push(`workflowType = ${quote(filters.type)}`);
  if (filters.correlationId) clauses.push(`correlationId = ${quote(filters.correlationId)}`);
  const search = new URLSearchParams({
    start: String(start), size: String(PAGE_SIZE), sort: "startTime:DESC", freeText: filters.text || "*", query: clauses.join(" AND "),
  });

  poll(3000, async (live) => {
    let result;
    try {
      result = await api(`/api/workflow/search?${search}`);
    } catch (e) {
      if (live()) document.getElementById("list-error").innerHTML = errorBanner(e);
      return;
    }
    if (!live()) return;
    document.getElementById("list-error").innerHTML = "";
    const rows = result.results.map((w) => {
      const started = Date.parse(w.startTime);
      const ended = w.endTime ? Date.parse(w.endTime) : 0;
      const href = `#/workflow/${encodeURIComponent(w.workflowId)}`;
      return `<tr data-testid="workflow-row" data-workflow-id="${esc(w.workflowId)}" data-status="${esc(w.status)}">
        <td><a href="${esc(href)}" class="wf-name">${esc(w.workflowType)} <span class="muted">v${esc(w.version)}</span></a>
          <div class="mono small muted">${esc(w.workflowId)}</div></td>
        <td>${badge(w.status)}</td>
        <td>${esc(w.correlationId || "–")}</td>
        <td class="nowrap">${esc(fmtTime(started))}</td>
        <td class="nowrap">${esc(fmtTime(ended))}</td>
        <td class="nowrap">${esc(span(started, ended))}</td></tr>`;
    });
    document.getElementById("wf-rows").innerHTML = rows.join("") ||
      `<tr><td colspan="6" class="muted empty">No workflow matches.</td></tr>`;
    const total = result.totalHits;
    const shown = result.results.length;
    document.getElementById("list-count").textContent = shown
      ? `${start + 1}–${start + shown} of ${total}` : `0 of ${total}`;
    const prev = document.getElementById("page-prev");
    const next = document.getElementById("page-next");
    prev.disabled = start === 0;
    next.disabled = start + shown >= total;
    prev.onclick = () => go({ start: String(Math.max(0, start - PAGE_SIZE)) });
    next.onclick = () => go({ start: String(start + PAGE_SIZE) });
    document.getElementById("list-updated").textContent = `updated ${fmtClock(Date.now())}`;
  });
}

// ------------------------------------------------------------------------------------------------ workflow detail

/** The latest attempt of each reference name; a DO_WHILE iteration's `ref__N` counts as `ref`. */
function latestByRef(tasks) {
  const byRef = new Map();
  byRef.iterations = new Map();
  for (const t of tasks) {
    byRef.set(t.referenceTaskName, t);
    const m = t.referenceTaskName.match(/^(.*)__(\d+)$/);
    if (m) {
      byRef.set(m[1], t);
      byRef.iterations.set(m[1], Math.max(byRef.iterations.get(m[1]) || 0, Number(m[2])));
    }
  }
  return byRef;
}

/** The definition's steps, left to right, each coloured by the status of its latest attempt; branches and loop
 *  bodies nested inside their step. */
function flow(steps, byRef) {
  if (!steps || steps.length === 0) return `<div class="flow empty muted">no steps</div>`;
  return `<ol class="flow">${steps.map((s) => `<li>${flowStep(s, byRef)}</li>`).join("")}</ol>`;
}

function flowStep(step, byRef) {
  const t = byRef.get(step.taskReferenceName);
  const status = t ? t.status : "NOT_RUN";
  const type = step.type || "SIMPLE";
  let inner = "";
  if (type === "FORK_JOIN") {
    inner = `<div class="branches">${(step.forkTasks || []).map((b) => `<div class="branch">${flow(b, byRef)}</div>`).join("")}</div>`;
  } else if (type === "SWITCH" || type === "DECISION") {
    const cases = Object.entries(step.decisionCases || {}).map(([label, b]) => [label, b]);
    if ((step.defaultCase || []).length) cases.push(["default", step.defaultCase]);
    inner = `<div class="branches">${cases.map(([label, b]) =>
      `<div class="branch"><div class="case">${esc(label)}</div>${flow(b, byRef)}</div>`).join("")}</div>`;
  } else if (type === "DO_WHILE") {
    const rounds = Math.max(0, ...(step.loopOver || []).map((c) => byRef.iterations.get(c.taskReferenceName) || 0));
    const label = rounds ? `loop · ${rounds} iteration${rounds === 1 ? "" : "s"}` : "loop";
    inner = `<div class="branches loop"><div class="branch"><div class="case">${esc(label)}</div>${flow(step.loopOver || [], byRef)}</div></div>`;
  }
  const name = step.name && step.name !== step.taskReferenceName ? ` · ${step.name}` : "";
  return `<div class="step st-${esc(status)}" data-testid="flow-step" data-ref="${esc(step.taskReferenceName)}" data-status="${esc(status)}"
      ${t ? `data-task-id="${esc(t.taskId)}"` : ""}>
      <div class="step-head"><span class="step-ref">${esc(step.taskReferenceName)}</span>${badge(status === "NOT_RUN" ? "NOT RUN" : status)}</div>
      <div class="step-type">${esc(type)}${esc(name)}${t && t.retryCount ? ` · retry ${esc(t.retryCount)}` : ""}</div>
      ${inner}
    </div>`;
}

function viewWorkflow(view, id) {
  view.innerHTML = `<div class="crumbs"><a href="#/workflows">Workflows</a> / <span class="mono">${esc(id)}</span></div>
    <div id="wf-error"></div><div id="wf-body"><p class="muted">Loading…</p></div>`;
  poll(1000, async (live) => {
    let wf;
    try {
      wf = await api(`/api/workflow/${encodeURIComponent(id)}`);
    } catch (e) {
      if (live()) document.getElementById("wf-error").innerHTML = errorBanner(e);
      return e.status !== 404;
    }
    if (!live()) return false;
    document.getElementById("wf-error").innerHTML = "";
    document.getElementById("wf-body").innerHTML = renderWorkflow(wf);
    document.querySelectorAll("#wf-body [data-task-id]").forEach((el) => {
      el.addEventListener("click", () => document.getElementById(`task-${el.dataset.taskId}`)?.scrollIntoView({ behavior: "smooth", block: "center" }));
    });
    return wf.status === "RUNNING" || wf.status === "PAUSED";
  });
}

function renderWorkflow(wf) {
  const def = wf.workflowDefinition || {};
  const byRef = latestByRef(wf.tasks || []);
  const running = wf.status === "RUNNING" || wf.status === "PAUSED";
  const fact = (label, value, extra = "") => `<div><dt>${esc(label)}</dt><dd${extra}>${value}</dd></div>`;
  const facts = [
    fact("Workflow id", `<span class="mono">${esc(wf.workflowId)}</span>`),
    fact("Correlation id", esc(wf.correlationId || "–")),
    fact("Started", esc(fmtTime(wf.startTime))),
    fact("Ended", esc(fmtTime(wf.endTime))),
    fact("Duration", esc(span(wf.startTime, wf.endTime)), ` data-testid="workflow-duration"`),
    fact("Updated", esc(fmtTime(wf.updateTime))),
    fact("Priority", esc(wf.priority ?? 0)),
    fact("Tasks", esc((wf.tasks || []).length)),
  ];
  if (wf.parentWorkflowId) {
    facts.push(fact("Parent", `<a class="mono" href="#/workflow/${esc(encodeURIComponent(wf.parentWorkflowId))}">${esc(wf.parentWorkflowId)}</a>`));
  }
  const reason = wf.reasonForIncompletion
    ? `<div class="banner error" data-testid="workflow-reason">${esc(wf.reasonForIncompletion)}</div>` : "";
  const rows = (wf.tasks || []).map((t) => taskRow(t)).join("");
  return `
    <div class="page-head wf-head">
      <h1>${esc(wf.workflowName)} <span class="muted">v${esc(wf.workflowVersion)}</span></h1>
      <span class="badge big st-${esc(wf.status)}" data-testid="workflow-status">${esc(wf.status)}</span>
      ${running ? `<span class="muted small live">refreshing every second</span>` : ""}
    </div>
    ${reason}
    <dl class="facts">${facts.join("")}</dl>
    <h2>Flow</h2>
    <div class="flow-wrap" data-testid="workflow-flow">${flow(def.tasks, byRef)}</div>
    <h2>Tasks</h2>
    <div class="table-wrap"><table class="grid tasks" data-testid="task-table">
      <colgroup><col class="c-seq"><col class="c-task"><col class="c-status"><col class="c-retries"><col class="c-times">
        <col class="c-duration"><col class="c-worker"><col><col></colgroup>
      <thead><tr><th>#</th><th>Task</th><th>Status</th><th>Retries</th><th>Times</th><th>Duration</th><th>Worker</th>
        <th>Input</th><th>Output</th></tr></thead>
      <tbody>${rows || `<tr><td colspan="9" class="muted empty">No task scheduled yet.</td></tr>`}</tbody>
    </table></div>
    <div class="io">
      <section><h2>Input</h2>${jsonBlock(wf.input)}</section>
      <section><h2>Output</h2><div data-testid="workflow-output">${jsonBlock(wf.output)}</div></section>
      ${Object.keys(wf.variables || {}).length ? `<section><h2>Variables</h2>${jsonBlock(wf.variables)}</section>` : ""}
    </div>`;
}

function jsonBlock(value) {
  return `<pre class="json-block">${esc(JSON.stringify(value ?? {}, null, 2))}</pre>`;
}

function taskRow(t) {
  const reason = t.reasonForIncompletion ? `<div class="reason">${esc(t.reasonForIncompletion)}</div>` : "";
  const polls = `${t.pollCount || 0} poll${t.pollCount === 1 ? "" : "s"}`;
  const worker = t.workerId ? `${esc(t.workerId)}<div class="small muted">${esc(polls)}</div>` : "–";
  const showType = t.taskType !== t.referenceTaskName ? `<div class="small muted">${esc(t.taskType)}</div>` : "";
  const time = (label, ms, testid) =>
    `<div><span class="muted">${esc(label)}</span> <span data-testid="${esc(testid)}">${fmtCellTime(ms)}</span></div>`;
  return `<tr id="task-${esc(t.taskId)}" data-testid="task-row" data-ref="${esc(t.referenceTaskName)}" data-status="${esc(t.status)}">
    <td class="muted">${esc(t.seq)}</td>
    <td><strong title="task id ${esc(t.taskId)}">${esc(t.referenceTaskName)}</strong>${showType}</td>
    <td>${badge(t.status)}${reason}</td>
    <td data-testid="task-retry">${esc(t.retryCount)}</td>
    <td class="times nowrap">${time("scheduled", t.scheduledTime, "task-scheduled")}${time("started", t.startTime, "task-started")}${time("ended", t.endTime, "task-ended")}</td>
    <td class="nowrap">${esc(span(t.startTime || t.scheduledTime, t.endTime))}</td>
    <td>${worker}</td>
    <td class="json-cell">${jsonDetails(t.inputData, `in-${t.taskId}`)}</td>
    <td class="json-cell" data-testid="task-output">${jsonDetails(t.outputData, `out-${t.taskId}`)}</td>
  </tr>`;
}

// ------------------------------------------------------------------------------------------------ definitions

function viewDefinitions(view) {
  view.innerHTML = `<div class="page-head"><h1>Definitions</h1></div><div id="defs-error"></div>
    <h2>Workflows</h2><div id="wf-defs" class="defs"><p class="muted">Loading…</p></div>
    <h2>Task types</h2><div id="task-defs"><p class="muted">Loading…</p></div>`;
  const mine = session;
  Promise.all([api("/api/metadata/workflow"), api("/api/metadata/taskdefs")]).then(([wfDefs, taskDefs]) => {
    if (mine !== session) return;
    renderWorkflowDefs(wfDefs);
    renderTaskDefs(taskDefs);
  }).catch((e) => {
    if (mine === session) document.getElementById("defs-error").innerHTML = errorBanner(e);
  });
}

/** The top level of a definition as a chain of step chips. */
function shape(def) {
  const steps = (def.tasks || []).map((t) =>
    `<span class="chip step-chip"><strong>${esc(t.taskReferenceName)}</strong> <span class="muted">${esc(t.type || "SIMPLE")}</span></span>`);
  return steps.join(`<span class="arrow" aria-hidden="true">→</span>`) || `<span class="muted">no steps</span>`;
}

function renderWorkflowDefs(defs) {
  defs.sort((a, b) => a.name.localeCompare(b.name) || b.version - a.version);
  const cards = defs.map((d, i) => {
    const input = {};
    for (const key of d.inputParameters || []) input[key] = "";
    return `<article class="def" data-testid="workflow-def" data-name="${esc(d.name)}" data-version="${esc(d.version)}">
      <header><h3>${esc(d.name)} <span class="muted">v${esc(d.version)}</span></h3>
        <a class="small" href="#/workflows?type=${esc(encodeURIComponent(d.name))}">runs</a></header>
      ${d.description ? `<p class="muted">${esc(d.description)}</p>` : ""}
      <div class="shape">${shape(d)}</div>
      <form class="start-form" data-testid="start-form" data-name="${esc(d.name)}" data-version="${esc(d.version)}" data-index="${i}">
        <label>Input (JSON)<textarea name="input" rows="3" spellcheck="false" data-testid="start-input">${esc(JSON.stringify(input, null, 2))}</textarea></label>
        <div class="start-row">
          <label>Correlation id<input name="correlationId" data-testid="start-correlation"></label>
          <button type="submit" class="primary" data-testid="start-button">Start</button>
        </div>
        <div class="form-error" data-testid="start-error"></div>
      </form>
    </article>`;
  });
  const box = document.getElementById("wf-defs");
  box.innerHTML = cards.join("") || `<p class="muted">No workflow definitions yet: POST /api/metadata/workflow.</p>`;
  for (const form of box.querySelectorAll("form.start-form")) form.addEventListener("submit", startWorkflow);
}

async function startWorkflow(e) {
  e.preventDefault();
  const form = e.currentTarget;
  const errorBox = form.querySelector(".form-error");
  errorBox.textContent = "";
  let input;
  try {
    input = JSON.parse(form.elements.input.value || "{}");
    if (typeof input !== "object" || input === null || Array.isArray(input)) throw new Error("the input must be a JSON object");
  } catch (err) {
    errorBox.textContent = `Input: ${err.message}`;
    return;
  }
  const body = { name: form.dataset.name, version: Number(form.dataset.version), input };
  const correlationId = form.elements.correlationId.value.trim();
  if (correlationId) body.correlationId = correlationId;
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    const id = await api("/api/workflow", { method: "POST", body: JSON.stringify(body) });
    location.hash = `#/workflow/${encodeURIComponent(String(id).trim())}`;
  } catch (err) {
    errorBox.textContent = err.message;
  } finally {
    button.disabled = false;
  }
}

function renderTaskDefs(defs) {
  defs.sort((a, b) => a.name.localeCompare(b.name));
  const rows = defs.map((d) => {
    const rate = d.rateLimitPerFrequency ? `${d.rateLimitPerFrequency} / ${d.rateLimitFrequencyInSeconds || 1} s` : "–";
    return `<tr data-testid="task-def" data-name="${esc(d.name)}">
      <td><strong>${esc(d.name)}</strong>${d.description ? `<div class="small muted">${esc(d.description)}</div>` : ""}</td>
      <td>${esc(d.retryCount)} <span class="muted small">${esc(d.retryLogic)} ${esc(d.retryDelaySeconds)} s</span></td>
      <td>${esc(d.timeoutSeconds ? `${d.timeoutSeconds} s` : "none")} <span class="muted small">${esc(d.timeoutPolicy)}</span></td>
      <td>${esc(d.responseTimeoutSeconds)} s</td>
      <td>${esc(d.pollTimeoutSeconds ? `${d.pollTimeoutSeconds} s` : "–")}</td>
      <td>${esc(d.concurrentExecLimit || "–")}</td>
      <td>${esc(rate)}</td>
      <td>${esc(d.ownerEmail || "–")}</td></tr>`;
  });
  document.getElementById("task-defs").innerHTML = `<table class="grid" data-testid="task-def-table">
    <thead><tr><th>Name</th><th>Retries</th><th>Timeout</th><th>Response timeout</th><th>Poll timeout</th>
      <th>Concurrency</th><th>Rate limit</th><th>Owner</th></tr></thead>
    <tbody>${rows.join("") || `<tr><td colspan="8" class="muted empty">No task definitions yet.</td></tr>`}</tbody></table>`;
}
