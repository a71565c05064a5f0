// kvmid's dashboard: plain JavaScript over the /v1 API, served by kvmid at /ui.
// Every call carries the bearer token the operator typed, kept in
// sessionStorage (this tab only). The event stream is read with fetch(), as
// EventSource cannot send an Authorization header; it reconnects with
// Last-Event-ID itself.
'use strict';

const TOKEN_KEY = 'kvmid-token';
const REFRESH_MS = 1000;
const MAX_ALERTS = 200;

const $ = (sel) => document.querySelector(sel);

// An element with text children only: nothing from the API is parsed as HTML.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  // As the API words it: "409 conflict: vCPU 1 is not paused".
  toString() { return (this.status ? this.status + ' ' : '') + this.code + ': ' + this.message; }
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function errorOf(status, text, statusText) {
  let body = null;
  try { body = JSON.parse(text); } catch (e) { /* not JSON */ }
  if (body && body.error) return new ApiError(status, body.error.code, body.error.message);
  return new ApiError(status, 'http_' + status, text || statusText);
}

// One API call; the JSON answer (text for /metrics). A 401 anywhere shows
// the 401 page.
async function api(method, path, body) {
  const headers = { Authorization: 'Bearer ' + token() };
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'unreachable', 'kvmid did not answer (' + e.message + ')');
  }
  const text = await resp.text();
  if (!resp.ok) {
    const err = errorOf(resp.status, text, resp.statusText);
    if (resp.status === 401) showUnauthorized(err);
    throw err;
  }
  return path === '/metrics' ? text : JSON.parse(text);
}

const vmPath = (vm) => '/v1/vms/' + encodeURIComponent(vm);

// --- screens -----------------------------------------------------------------

const state = { started: false, authorized: false };

function showOnly(id) {
  for (const s of ['login', 'unauthorized', 'main']) $('#' + s).hidden = s !== id;
  $('#forget-token').hidden = id !== 'main';
}

function showUnauthorized(err) {
  state.authorized = false;
  sessionStorage.removeItem(TOKEN_KEY);
  stream.stop();
  $('#unauthorized-message').textContent = err.toString();
  showOnly('unauthorized');
}

function showLogin() {
  stream.stop();
  showOnly('login');
  $('#token-input').value = '';
  $('#token-input').focus();
}

async function openDashboard() {
  if (!token()) {
    showLogin();
    return;
  }
  try {
    await api('GET', '/v1/vms'); // proves the token before anything is shown
  } catch (e) {
    if (e.status !== 401) { // kvmid down or busy: say so and try again
      showOnly('main');
      banner(e);
      setTimeout(openDashboard, 2000);
    }
    return;
  }
  state.authorized = true;
  showOnly('main');
  stream.start();
  route();
}

function banner(err) {
  const b = $('#error-banner');
  b.hidden = !err;
  b.textContent = err ? err.toString() : '';
}

// --- views -------------------------------------------------------------------

function currentVm() {
  const m = location.hash.match(/^#\/vm\/(.+)$/);
  return m ? decodeURIComponent(m[1]) : null;
}

function route() {
  const vm = currentVm();
  $('#vm-list-view').hidden = vm !== null;
  $('#vm-view').hidden = vm === null;
  $('#action-result').textContent = '';
  $('#action-error').hidden = true;
  $('#memory-error').hidden = true;
  $('#memory-dump').textContent = '';
  refresh();
}

let refreshing = false;
async function refresh() {
  if (!state.authorized || refreshing) return;
  refreshing = true;
  try {
    const vm = currentVm();
    await Promise.all([vm === null ? renderVmList() : renderVm(vm), renderLatency()]);
    banner(null);
  } catch (e) {
    if (e.status !== 401) banner(e);
  } finally {
    refreshing = false;
  }
}

function stateBadge(s) { return el('span', { class: 'state', 'data-state': s }, s); }
function num(v) { return el('td', { class: 'num' }, v); }
// Replaces the children only when they changed: a button the operator is
// pressing is not swapped for a copy between mouse down and up.
function fill(parent, rows) {
  const next = document.createElement(parent.tagName);
  next.append(...rows);
  if (next.innerHTML !== parent.innerHTML) parent.replaceChildren(...next.childNodes);
}

async function renderVmList() {
  const { vms } = await api('GET', '/v1/vms');
  $('#vm-list-empty').hidden = vms.length > 0;
  fill($('#vm-list tbody'), vms.map((v) => el('tr', { 'data-vm': v.uuid, 'data-name': v.name },
    el('td', {}, el('a', { href: '#/vm/' + encodeURIComponent(v.name || v.uuid) }, v.name || v.uuid)),
    el('td', {}, stateBadge(v.state)),
    el('td', {}, v.protocol || ''),
    num(v.vcpus), num(v.sessions), num(v.counters.events), num(v.counters.alerts),
    num(v.counters.protocol_errors), el('td', {}, v.policy || ''))));
}

function vcpuState(c) {
  if (c.state === 'in_event') return 'in event ' + (c.event || '?');
  return c.state;
}

async function renderVm(name) {
  const path = vmPath(name);
  const [vm, vcpus, bps, pages] = await Promise.all([
    api('GET', path), api('GET', path + '/vcpus'), api('GET', path + '/breakpoints'),
    api('GET', path + '/page-access?limit=100')]);
  if (currentVm() !== name) return; // the operator moved on meanwhile
  $('#vm-name').textContent = vm.name || vm.uuid;
  const badge = $('#vm-state');
  badge.textContent = vm.state;
  badge.dataset.state = vm.state;
  $('#vm-summary').textContent = vm.uuid + ' · ' + (vm.protocol || '?') + ' · ' + vm.vcpus
    + ' vCPUs · session ' + vm.sessions + ' · ' + (vm.peer || 'no peer') + ' · policy '
    + (vm.policy || 'none');
  fill($('#vcpu-list tbody'), vcpus.vcpus.map((c) => el('tr', { 'data-vcpu': c.index, 'data-state': c.state },
    num(c.index), el('td', {}, el('span', { class: 'state', 'data-state': c.state }, vcpuState(c))),
    num(c.counters.events), num(c.counters.alerts),
    el('td', { class: 'mono' }, (c.enabled_events || []).join(' ')))));
  renderRules(vm);
  fill($('#breakpoint-list tbody'), bps.breakpoints.map((b) => el('tr', { 'data-gpa': b.gpa },
    el('td', { class: 'mono' }, b.gpa), el('td', { class: 'mono' }, b.original),
    el('td', {}, b.planted ? 'yes' : 'no'), num(b.hits),
    el('td', {}, el('button', { type: 'button', class: 'remove-breakpoint', 'data-gpa': b.gpa }, 'Remove')))));
  fill($('#page-list tbody'), pages.ranges.map((r) => el('tr', {},
    el('td', { class: 'mono' }, r.gpa), num(r.pages), el('td', { class: 'mono' }, r.access))));
  const more = $('#page-list-more');
  more.hidden = !pages.next;
  more.textContent = pages.next ? 'More ranges from ' + pages.next + ' (kvmictl page-access lists them all).' : '';
}

// The policy's rules with their hits as kvmid counts them (rule_hits: the
// alerts of each rule, the hits of each policy breakpoint, over the VM's
// record).
function renderRules(vm) {
  const p = vm.policy_rules;
  const counted = new Map((vm.rule_hits || []).map((h) => [h.kind + '/' + h.name, h.hits]));
  const rows = [];
  const row = (label, kind, rule, target) => rows.push(el('tr', { 'data-rule': rule, 'data-kind': kind },
    el('td', {}, label), el('td', {}, rule), el('td', { class: 'mono' }, target),
    num(counted.get(kind + '/' + rule) || 0)));
  if (p) {
    for (const r of p.page_protection) row('page', 'page-protection', r.name, r.gpa + ' +' + r.size + ' ' + r.access + ' (' + r.on_violation + ')');
    for (const r of p.msr_protection) row('msr', 'msr-protection', r.name, 'MSR ' + r.msr);
    for (const r of p.cr_pins) row('cr pin', 'cr-pin', r, '');
    for (const r of p.breakpoints) row('breakpoint', 'breakpoint', r.name, r.gpa);
  }
  fill($('#rule-list tbody'), rows);
}

// Prometheus text -> the buckets of kvmid_event_reply_seconds.
function replyHistogram(text) {
  const buckets = [];
  let sum = 0, count = 0;
  for (const line of text.split('\n')) {
    let m = line.match(/^kvmid_event_reply_seconds_bucket\{le="([^"]+)"\} (\d+)/);
    if (m) buckets.push({ le: m[1] === '+Inf' ? Infinity : Number(m[1]), cumulative: Number(m[2]) });
    else if ((m = line.match(/^kvmid_event_reply_seconds_sum (\S+)/))) sum = Number(m[1]);
    else if ((m = line.match(/^kvmid_event_reply_seconds_count (\d+)/))) count = Number(m[1]);
  }
  let prev = 0;
  for (const b of buckets) {
    b.count = b.cumulative - prev;
    prev = b.cumulative;
  }
  return { buckets, sum, count };
}

function seconds(s) {
  if (s === Infinity) return '+Inf';
  if (s < 1e-3) return Math.round(s * 1e6) + ' µs';
  if (s < 1) return +(s * 1e3).toPrecision(3) + ' ms';
  return s + ' s';
}

async function renderLatency() {
  const h = replyHistogram(await api('GET', '/metrics'));
  $('#latency-summary').textContent = h.count
    ? h.count + ' replies, mean ' + seconds(h.sum / h.count) + ' (event received → reply queued)'
    : 'No event answered yet.';
  const most = Math.max(1, ...h.buckets.map((b) => b.count));
  fill($('#latency'), h.buckets.map((b) => {
    const bar = el('div', { class: 'bar' });
    bar.style.width = (100 * b.count / most) + '%'; // CSSOM: allowed by the CSP, unlike style=""
    return el('div', { class: 'bucket', 'data-le': String(b.le) },
      el('span', {}, '≤ ' + seconds(b.le)), el('div', {}, bar), el('span', { class: 'count' }, b.count));
  }));
}

// --- actions -----------------------------------------------------------------

async function act(question, method, path, body, done) {
  if (!confirm(question)) return;
  const result = $('#action-result');
  const error = $('#action-error');
  result.textContent = '';
  error.hidden = true;
  try {
    const r = await api(method, path, body);
    result.textContent = done(r);
  } catch (e) {
    error.textContent = e.toString();
    error.hidden = false;
  }
  refresh();
}

function wireActions() {
  const vm = () => currentVm();
  $('#pause-vm').addEventListener('click', () => act(
    'Pause ' + vm() + '? Every vCPU is held in its next event until you resume it.',
    'POST', vmPath(vm()) + '/pause', undefined, (r) => r.vm + ': ' + r.result));
  $('#resume-vm').addEventListener('click', () => act(
    'Resume ' + vm() + '?', 'POST', vmPath(vm()) + '/resume', undefined, (r) => r.vm + ': ' + r.result));
  $('#unhook-vm').addEventListener('click', () => act(
    'Unhook ' + vm() + '? kvmid removes its hooks and closes the VM\'s socket; the VM stays unhooked until admitted again.',
    'POST', vmPath(vm()) + '/unhook', undefined, (r) => r.vm + ': ' + r.result));
  $('#breakpoint-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const gpa = $('#breakpoint-gpa').value.trim();
    act('Plant a breakpoint at ' + gpa + ' in ' + vm() + '?', 'POST', vmPath(vm()) + '/breakpoints',
      { gpa }, (r) => 'breakpoint planted at ' + r.gpa);
  });
  $('#breakpoint-list').addEventListener('click', (ev) => {
    const b = ev.target.closest('button.remove-breakpoint');
    if (!b) return;
    const gpa = b.dataset.gpa;
    act('Remove the breakpoint at ' + gpa + ' from ' + vm() + '?', 'DELETE',
      vmPath(vm()) + '/breakpoints/' + encodeURIComponent(gpa), undefined, (r) => 'breakpoint at ' + r.gpa + ' ' + r.result);
  });
  $('#memory-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    readMemory(vm(), $('#memory-gpa').value.trim(), $('#memory-len').value.trim());
  });
}

function hexDump(gpa, hex) {
  const base = BigInt(gpa);
  const lines = [];
  for (let off = 0; off * 2 < hex.length; off += 16) {
    const chunk = hex.slice(off * 2, off * 2 + 32);
    const bytes = chunk.match(/../g);
    const text = bytes.map((b) => {
      const c = parseInt(b, 16);
      return c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : '.';
    }).join('');
    lines.push((base + BigInt(off)).toString(16).padStart(12, '0') + '  '
      + bytes.join(' ').padEnd(47) + '  ' + text);
  }
  return lines.join('\n');
}

async function readMemory(vm, gpa, len) {
  const error = $('#memory-error');
  const dump = $('#memory-dump');
  error.hidden = true;
  dump.textContent = '';
  try {
    const q = '?gpa=' + encodeURIComponent(gpa) + '&len=' + encodeURIComponent(len);
    const r = await api('GET', vmPath(vm) + '/memory' + q);
    dump.textContent = hexDump(r.gpa, r.data);
  } catch (e) {
    error.textContent = e.toString();
    error.hidden = false;
  }
}

// --- the event stream ----------------------------------------------------------

const stream = {
  lastId: null,
  controller: null,
  retryMs: 1000,
  timer: null,
  dropped: 0, // what kvmid reported lost on this connection
  droppedBefore: 0, // on the connections before it

  setStatus(s, text) {
    const e = $('#stream-status');
    e.dataset.state = s;
    e.textContent = 'event stream: ' + text;
  },

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.controller) this.controller.abort();
    this.controller = null;
    this.setStatus('closed', 'closed');
  },

  start() {
    if (this.controller) return;
    const controller = new AbortController();
    this.controller = controller;
    this.run(controller).catch(() => {}).finally(() => this.lost(controller));
  },

  // Records arrive as long as the connection lasts.
  async run(controller) {
    const headers = { Authorization: 'Bearer ' + token(), Accept: 'text/event-stream' };
    if (this.lastId) headers['Last-Event-ID'] = this.lastId;
    const resp = await fetch('/v1/events', { headers, cache: 'no-store', signal: controller.signal });
    if (!resp.ok) {
      const err = errorOf(resp.status, await resp.text(), resp.statusText);
      if (resp.status === 401) showUnauthorized(err);
      else note(err.toString());
      return;
    }
    this.setStatus('live', 'live');
    this.retryMs = 1000;
    this.droppedBefore += this.dropped; // kvmid counts each connection's from 0
    this.dropped = 0;
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        this.record(buf.slice(0, end));
        buf = buf.slice(end + 2);
      }
    }
  },

  // One SSE record: "id:", "event:", "data:" lines; ":" lines are comments.
  record(block) {
    let id = null, event = 'message', data = '';
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'id') id = value;
      else if (field === 'event') event = value;
      else if (field === 'data') data += (data ? '\n' : '') + value;
    }
    if (id) {
      this.lastId = id;
      $('#stream-status').dataset.lastEventId = id;
    }
    if (!data) return;
    let j;
    try { j = JSON.parse(data); } catch (e) { return; }
    if (event === 'dropped') {
      this.dropped = j.dropped;
      note('kvmid dropped ' + j.dropped + ' records of this connection (its queue in kvmid was full)');
    } else if (event === 'replay-gap') {
      note(j.message);
    } else if (j.kind === 'alert') {
      showAlert(j);
    } else if (j.kind === 'lifecycle') {
      refresh();
    }
  },

  // The connection ended: reconnect (with Last-Event-ID) unless stopped.
  lost(controller) {
    if (this.controller !== controller || !state.authorized) return;
    this.controller = null;
    this.setStatus('reconnecting', 'reconnecting');
    this.timer = setTimeout(() => this.start(), this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, 10000);
  },
};

function note(text) {
  const li = el('li', { class: 'notice' }, el('time', {}, new Date().toISOString().slice(11, 19)),
    el('span', { class: 'what' }, text));
  prependAlert(li);
  const dropped = stream.droppedBefore + stream.dropped;
  const notes = $('#stream-notes');
  notes.dataset.dropped = dropped;
  notes.textContent = dropped ? 'records dropped by kvmid: ' + dropped : '';
}

function prependAlert(li) {
  const list = $('#alerts');
  list.prepend(li);
  while (list.children.length > MAX_ALERTS) list.lastElementChild.remove();
}

function showAlert(a) {
  const rule = a.fields && a.fields.rule ? a.fields.rule : a.name;
  const when = new Date(a.time_ns / 1e6).toISOString().slice(11, 23);
  prependAlert(el('li', { class: 'alert', 'data-seq': a.seq, 'data-vm': a.vm, 'data-vm-name': a.vm_name,
    'data-name': a.name, 'data-rule': rule },
  el('time', {}, when), el('span', { class: 'what' }, a.name), ' ',
  (a.vm_name || a.vm) + (a.vcpu !== undefined ? ' vCPU ' + a.vcpu : '') + ' · rule ' + rule + ': ',
  a.message));
}

// --- start ---------------------------------------------------------------------

document.addEventListener('DOMContentLoaded', () => {
  $('#login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('#token-input').value.trim());
    openDashboard();
  });
  $('#retry-token').addEventListener('click', showLogin);
  $('#forget-token').addEventListener('click', () => {
    state.authorized = false;
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin();
  });
  window.addEventListener('hashchange', route);
  wireActions();
  setInterval(refresh, REFRESH_MS);
  openDashboard();
});
