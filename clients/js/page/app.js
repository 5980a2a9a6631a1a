// sidewire built-in dashboard. The live stream comes through the dashboard
// client of clients/js (src/dashboard.ts: reconnects, resume, close codes),
// the history from /api/v1/activity/recent. Built into
// assets/dashboard/app.js by `npm run build` in clients/js (esbuild, one
// minified file, no dependencies; the binary embeds it).
import { connect as connect_ } from '../src/dashboard.ts';

(() => {
  const RECENT_PATH = '/api/v1/activity/recent?limit=50';
  const TOKEN_KEY = 'sidewire.dashboardToken';
  const FEED_DOM_MAX = 200;     // items rendered in #feed
  const FEED_MODEL_MAX = 1000;  // events kept in memory (for filtering)
  const SPARK_N = 60;           // stats updates kept for the sparklines

  const BUILTINS = [
    ['eventsTotal', 'Events total'],
    ['eventsPerMinute', 'Events / min'],
    ['activeConnections', 'Connections'],
    ['messagesPerMinute', 'Messages / min'],
    ['uptimeSeconds', 'Uptime'],
    ['lastEventAt', 'Last event'],
    ['lastSeq', 'Last seq'],
  ];
  // `replicas` (live replicas of a cluster; 1 for a single process) is shown
  // under the connections card, not as a card of its own.
  const NOT_A_CARD = new Set(['eventsByType', 'generatedAt', 'replicas', ...BUILTINS.map((b) => b[0])]);

  const $ = (id) => document.getElementById(id);
  const ui = {
    conn: $('conn-state'), latency: $('latency'), version: $('server-version'),
    notice: $('notice'), noticeText: $('notice-text'),
    tokenForm: $('token-form'), tokenInput: $('token-input'), tokenMsg: $('token-message'),
    stats: $('stats'), byType: $('events-by-type'), byTypeEmpty: $('events-by-type-empty'),
    sparkE: $('spark-events'), sparkM: $('spark-messages'),
    sparkEV: $('spark-events-value'), sparkMV: $('spark-messages-value'), sparkCaption: $('spark-caption'),
    feed: $('feed'), feedEmpty: $('feed-empty'), feedCount: $('feed-count'),
    filter: $('type-filter'), knownTypes: $('known-types'), pause: $('feed-pause'),
  };

  const state = {
    token: null,
    client: null,         // the dashboard client (its lastSeq is the resume point)
    conn: 'connecting',   // connecting | live | reconnecting | unauthorized | forbidden
    retryAt: 0,
    retryReason: '',
    stats: null,
    statsAt: 0,
    history: [],          // [{e, m}] per stats_update
    events: [],           // newest first, by seq
    bySeq: new Map(),
    nodes: new Map(),     // seq -> <li> for rendered items
    expanded: new Set(),
    types: new Set(),
    terms: [],
    paused: false,
    renderQueued: false,
  };

  // ---------- helpers ----------

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }

  function fmtNumber(v) {
    if (typeof v !== 'number' || !Number.isFinite(v)) return '—';
    return Number.isInteger(v) ? String(v) : String(Math.round(v * 100) / 100);
  }

  function fmtDuration(secs) {
    secs = Math.max(0, Math.floor(secs));
    const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24;
    const m = Math.floor(secs / 60) % 60, s = secs % 60;
    const p = (n) => String(n).padStart(2, '0');
    if (d) return `${d}d ${p(h)}h`;
    if (h) return `${h}h ${p(m)}m`;
    if (m) return `${m}m ${p(s)}s`;
    return `${s}s`;
  }

  function fmtAgo(iso) {
    const t = Date.parse(iso);
    if (!Number.isFinite(t)) return '—';
    const secs = Math.max(0, (Date.now() - t) / 1000);
    return secs < 1 ? 'just now' : `${fmtDuration(secs).split(' ')[0]} ago`;
  }

  const timeFmt = new Intl.DateTimeFormat(undefined, {
    hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
  });
  function fmtTime(iso) {
    const t = Date.parse(iso);
    return Number.isFinite(t) ? timeFmt.format(t) : '';
  }

  function humanize(key) {
    const s = key.replace(/_/g, ' ').replace(/([a-z0-9])([A-Z])/g, '$1 $2').toLowerCase();
    return s.charAt(0).toUpperCase() + s.slice(1);
  }

  function typeHue(type) {
    let h = 0;
    for (let i = 0; i < type.length; i++) h = (h * 31 + type.charCodeAt(i)) >>> 0;
    return h % 360;
  }

  function showNotice(text) {
    ui.noticeText.textContent = text;
    ui.notice.hidden = false;
  }

  // ---------- token ----------

  function loadToken() {
    const params = new URLSearchParams(location.search);
    const fromUrl = params.get('token');
    if (fromUrl) {
      saveToken(fromUrl);
      params.delete('token'); // keep the secret out of the address bar and history
      const q = params.toString();
      history.replaceState(null, '', location.pathname + (q ? `?${q}` : '') + location.hash);
      return;
    }
    try { state.token = localStorage.getItem(TOKEN_KEY) || null; } catch { /* storage blocked */ }
  }

  function saveToken(token) {
    state.token = token || null;
    try {
      if (token) localStorage.setItem(TOKEN_KEY, token);
      else localStorage.removeItem(TOKEN_KEY);
    } catch { /* storage blocked: keep it in memory only */ }
  }

  function authHeaders() {
    const h = { Accept: 'application/json' };
    if (state.token) h.Authorization = `Bearer ${state.token}`;
    return h;
  }

  function showTokenForm(message) {
    ui.tokenMsg.textContent = message;
    ui.tokenForm.hidden = false;
    ui.tokenInput.value = '';
    ui.tokenInput.focus();
  }

  function setUnauthorized() {
    if (state.conn === 'live') {
      // The stream works but a REST call was refused: just ask for a token.
      showTokenForm('The server refused a request: enter a dashboard token.');
      return;
    }
    if (state.client) state.client.close(); // no retry loop on a refused token
    setConn('unauthorized');
    showTokenForm(state.token ? 'The token was rejected. Enter a valid dashboard token.'
      : 'This dashboard needs a token.');
  }

  // ---------- REST ----------

  async function api(path) {
    const res = await fetch(path, { headers: authHeaders(), cache: 'no-store' });
    if (res.status === 401) {
      setUnauthorized();
      throw new Error('unauthorized');
    }
    if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
    return res.json();
  }

  async function loadRecent() {
    try {
      const body = await api(RECENT_PATH);
      for (const ev of body.items || []) addEvent(ev);
    } catch (err) {
      if (err.message !== 'unauthorized') console.warn('sidewire: recent activity', err);
    }
  }

  // ---------- connection (the dashboard client of clients/js) ----------

  function setConn(kind) {
    state.conn = kind;
    renderConn();
  }

  function renderConn() {
    let text = state.conn;
    if (state.conn === 'connecting') text = 'connecting…';
    if (state.conn === 'reconnecting') {
      const secs = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
      text = `reconnecting in ${secs}s${state.retryReason ? ` (${state.retryReason})` : ''}`;
    }
    if (ui.conn.textContent !== text) ui.conn.textContent = text;
    ui.conn.dataset.state = state.conn;
    if (state.conn !== 'live') ui.latency.textContent = '';
  }

  // A refused connection says why in a few words (close codes, HTTP statuses).
  function shortReason(reason) {
    if (/^closed 1001/.test(reason)) return 'server restarting';
    if (/^closed 1008/.test(reason)) return reason.slice(12) || 'policy';
    if (/^refused: 429/.test(reason)) return 'too_many_connections';
    if (/^refused: 503/.test(reason)) return 'server_at_capacity';
    if (reason === 'unreachable') return 'server unreachable';
    return /^closed/.test(reason) ? '' : reason;
  }

  function connect() {
    const resuming = state.client ? state.client.lastSeq : null;
    if (state.client) state.client.close();
    const client = connect_({
      url: location.origin,
      token: state.token || undefined,
      afterSeq: resuming ?? undefined,
    });
    state.client = client;
    let first = resuming === null;
    client.on('state', (s, info) => {
      if (state.client !== client) return;
      if (s === 'open') setConn('live');
      else if (s === 'connecting') setConn('connecting');
      else if (s === 'reconnecting') {
        state.retryAt = Date.now() + (info.delayMs || 0);
        state.retryReason = shortReason(info.reason || '');
        setConn('reconnecting');
      }
    });
    client.on('ack', (d) => {
      ui.version.textContent = d.serverVersion ? `v${d.serverVersion}` : '';
      ui.version.title = d.connectionId ? `connection ${d.connectionId}` : '';
      if (first) loadRecent(); // everything up to the ack's lastSeq; live events cover the rest
      first = false;
    });
    client.on('event', addEvent);
    client.on('stats', renderStats);
    client.on('pong', (ms) => { ui.latency.textContent = `${ms} ms`; });
    client.on('resume', (r) => {
      if (r.reset) {
        // The server's history started over (a fresh store): so does the feed.
        resetFeed();
        loadRecent();
      } else if (r.truncated) {
        showNotice(`Reconnected: replayed ${r.replayed} events, older missed events were skipped.`);
      }
    });
    client.on('error', (e) => {
      if (state.client !== client) return;
      if (e.code === 'unauthorized') setUnauthorized();
      else if (e.code === 'forbidden_origin') { setConn('forbidden'); showNotice('This page\'s origin is not allowed by the server (forbidden_origin).'); }
      else if (!e.status && e.code !== 'connect_failed') showNotice(`Server error: ${e.message}`);
    });
  }

  function reconnect() {
    connect(); // a new client resumes from the old one's last seq
  }


  // ---------- stats ----------

  function ensureCard(key, label, extra) {
    let card = ui.stats.querySelector(`[data-stat="${CSS.escape(key)}"]`);
    if (!card) {
      card = el('div', extra ? 'card extra' : 'card');
      card.dataset.stat = key;
      card.append(el('div', 'label', label), el('div', 'value', '—'));
      ui.stats.append(card);
    }
    return card;
  }

  function setCard(card, text, raw, title) {
    const v = card.querySelector('.value');
    if (v.textContent !== text) v.textContent = text;
    card.dataset.value = raw == null ? '' : String(raw);
    card.title = title || '';
  }

  function renderBuiltins() {
    const s = state.stats || {};
    for (const [key, label] of BUILTINS) {
      const card = ensureCard(key, label, false);
      const v = s[key];
      if (key === 'uptimeSeconds') {
        const live = typeof v === 'number' && state.conn === 'live';
        const secs = live ? v + (Date.now() - state.statsAt) / 1000 : v;
        setCard(card, typeof v === 'number' ? fmtDuration(secs) : '—', v, typeof v === 'number' ? `${Math.floor(secs)} s` : '');
      } else if (key === 'lastEventAt') {
        setCard(card, v ? fmtAgo(v) : '—', v, v || 'no event yet');
      } else {
        setCard(card, fmtNumber(v), v);
      }
      if (key === 'activeConnections') renderReplicas(card, s.replicas);
    }
  }

  // "3 replicas" under the connections card when several replicas serve
  // this dashboard (connections and messages are their sums); hidden for one.
  function renderReplicas(card, n) {
    let note = card.querySelector('.note');
    if (!note) {
      note = el('div', 'note');
      note.id = 'replicas';
      card.append(note);
    }
    const several = typeof n === 'number' && n > 1;
    const text = several ? `${fmtNumber(n)} replicas` : '';
    if (note.textContent !== text) note.textContent = text;
    note.hidden = !several;
    note.dataset.value = typeof n === 'number' ? String(n) : '';
    if (several) card.title = `summed over ${fmtNumber(n)} live replicas`;
  }

  function renderStats(s) {
    state.stats = s;
    state.statsAt = Date.now();
    renderBuiltins();

    const extras = Object.keys(s).filter((k) => !NOT_A_CARD.has(k) && typeof s[k] === 'number').sort();
    const keep = new Set(extras);
    for (const card of ui.stats.querySelectorAll('.card.extra')) {
      if (!keep.has(card.dataset.stat)) card.remove();
    }
    for (const key of extras) {
      const card = ensureCard(key, humanize(key), true);
      setCard(card, fmtNumber(s[key]), s[key]);
      ui.stats.append(card); // keeps extras sorted after the built-ins
    }

    renderByType(s.eventsByType || {});

    state.history.push({ e: Number(s.eventsPerMinute) || 0, m: Number(s.messagesPerMinute) || 0 });
    if (state.history.length > SPARK_N) state.history.shift();
    renderSparks();
  }

  function renderByType(byType) {
    const entries = Object.entries(byType).filter(([, n]) => typeof n === 'number').sort((a, b) => b[1] - a[1]);
    const max = entries.length ? Math.max(1, entries[0][1]) : 1;
    const items = entries.map(([type, n]) => {
      noteType(type);
      const li = el('li');
      li.dataset.typeCount = type;
      li.style.setProperty('--share', `${(n / max) * 100}%`);
      li.style.setProperty('--hue', typeHue(type));
      const btn = el('button', 'type-chip', type);
      btn.type = 'button';
      btn.title = `show only ${type}`;
      btn.addEventListener('click', () => setFilter(type));
      li.append(btn, el('span', 'count', String(n)));
      return li;
    });
    ui.byType.replaceChildren(...items);
    ui.byTypeEmpty.hidden = items.length > 0;
  }

  // ---------- sparklines ----------

  const SVG_NS = 'http://www.w3.org/2000/svg';

  function drawSpark(svg, values) {
    const w = Math.max(60, Math.round(svg.clientWidth || 300));
    const h = Math.max(20, Math.round(svg.clientHeight || 56));
    const pad = 4;
    svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
    const parts = [];
    if (values.length) {
      const max = Math.max(1, ...values);
      const step = (w - 2 * pad) / (SPARK_N - 1);
      const x0 = w - pad - (values.length - 1) * step;
      const pts = values.map((v, i) => [x0 + i * step, h - pad - (v / max) * (h - 2 * pad)]);
      const line = pts.map(([x, y], i) => `${i ? 'L' : 'M'}${x.toFixed(1)},${y.toFixed(1)}`).join('');
      const [lx, ly] = pts[pts.length - 1];
      const area = document.createElementNS(SVG_NS, 'path');
      area.setAttribute('class', 'area');
      area.setAttribute('d', `${line}L${lx.toFixed(1)},${h}L${x0.toFixed(1)},${h}Z`);
      const path = document.createElementNS(SVG_NS, 'path');
      path.setAttribute('class', 'line');
      path.setAttribute('d', line);
      const dot = document.createElementNS(SVG_NS, 'circle');
      dot.setAttribute('class', 'dot');
      dot.setAttribute('cx', lx.toFixed(1));
      dot.setAttribute('cy', ly.toFixed(1));
      dot.setAttribute('r', '2.5');
      parts.push(area, path, dot);
    }
    svg.replaceChildren(...parts);
  }

  function renderSparks() {
    const hist = state.history;
    drawSpark(ui.sparkE, hist.map((p) => p.e));
    drawSpark(ui.sparkM, hist.map((p) => p.m));
    const last = hist[hist.length - 1];
    ui.sparkEV.textContent = last ? fmtNumber(last.e) : '—';
    ui.sparkMV.textContent = last ? fmtNumber(last.m) : '—';
    ui.sparkCaption.textContent = hist.length
      ? `last ${hist.length} stats update${hist.length === 1 ? '' : 's'}` : 'waiting for stats…';
  }

  // ---------- feed ----------

  function noteType(type) {
    if (state.types.has(type)) return;
    state.types.add(type);
    const opt = document.createElement('option');
    opt.value = type;
    ui.knownTypes.append(opt);
  }

  function resetFeed() {
    state.events = [];
    state.bySeq.clear();
    state.nodes.clear();
    state.expanded.clear();
    renderFeed(true);
  }

  function addEvent(ev) {
    if (!ev || typeof ev.seq !== 'number' || typeof ev.type !== 'string') return;
    if (state.bySeq.has(ev.seq)) return; // dedupe: replay, REST and live may overlap
    const list = state.events;
    if (list.length >= FEED_MODEL_MAX && ev.seq < list[list.length - 1].seq) return;
    let i = 0;
    if (list.length && ev.seq < list[0].seq) { // rare: out of order (REST page); binary search
      let lo = 0, hi = list.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (list[mid].seq > ev.seq) lo = mid + 1; else hi = mid;
      }
      i = lo;
    }
    list.splice(i, 0, ev);
    state.bySeq.set(ev.seq, ev);
    while (list.length > FEED_MODEL_MAX) {
      const old = list.pop();
      state.bySeq.delete(old.seq);
      state.nodes.delete(old.seq);
      state.expanded.delete(old.seq);
    }
    noteType(ev.type);
    scheduleRender();
  }

  function matches(type) {
    if (!state.terms.length) return true;
    const t = type.toLowerCase();
    return state.terms.some((term) => t.includes(term));
  }

  function setFilter(value) {
    ui.filter.value = value;
    applyFilter();
  }

  function applyFilter() {
    state.terms = ui.filter.value.toLowerCase().split(/[\s,]+/).filter(Boolean);
    renderFeed(true);
  }

  function scheduleRender() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    // setTimeout, not requestAnimationFrame: the latter stalls in background tabs.
    setTimeout(() => renderFeed(false), 50);
  }

  function preview(data) {
    let s;
    try { s = JSON.stringify(data ?? {}); } catch { s = String(data); }
    return s.length > 160 ? `${s.slice(0, 159)}…` : s;
  }

  function makeItem(ev) {
    const li = el('li', 'item');
    li.dataset.seq = String(ev.seq);
    li.dataset.type = ev.type;
    li.tabIndex = 0;
    li.setAttribute('aria-expanded', 'false');
    li.style.setProperty('--hue', typeHue(ev.type));
    if (ev.type === 'error') li.classList.add('is-error');
    const head = el('div', 'item-head');
    const time = el('time', 'time', fmtTime(ev.timestamp));
    if (ev.timestamp) { time.dateTime = ev.timestamp; time.title = ev.timestamp; }
    head.append(time, el('span', 'type-badge', ev.type), el('span', 'seq', `#${ev.seq}`));
    if (ev.source) head.append(el('span', 'source', ev.source));
    li.append(head, el('div', 'preview', preview(ev.data)));
    if (state.expanded.has(ev.seq)) expand(li, ev);
    return li;
  }

  function expand(li, ev) {
    const meta = [`seq ${ev.seq}`, ev.timestamp, ev.id && `id ${ev.id}`, ev.source && `source ${ev.source}`]
      .filter(Boolean).join(' · ');
    const box = el('div', 'detail');
    box.append(el('div', 'meta', meta), el('pre', 'data', JSON.stringify(ev.data ?? {}, null, 2)));
    li.append(box);
    li.setAttribute('aria-expanded', 'true');
  }

  function toggleItem(li) {
    const seq = Number(li.dataset.seq);
    const ev = state.bySeq.get(seq);
    if (!ev) return;
    const box = li.querySelector('.detail');
    if (box) {
      box.remove();
      li.setAttribute('aria-expanded', 'false');
      state.expanded.delete(seq);
    } else {
      state.expanded.add(seq);
      expand(li, ev);
    }
  }

  function renderFeed(force) {
    state.renderQueued = false;
    if (state.paused && !force) {
      const newer = state.events.findIndex((e) => state.nodes.has(e.seq));
      ui.feedCount.textContent = `paused · ${newer < 0 ? state.events.length : newer} new`;
      return;
    }
    const want = [];
    let matching = 0;
    for (const ev of state.events) {
      if (!matches(ev.type)) continue;
      matching++;
      if (want.length < FEED_DOM_MAX) want.push(ev);
    }
    const nodes = new Map();
    let cur = ui.feed.firstChild;
    for (const ev of want) {
      const node = state.nodes.get(ev.seq) || makeItem(ev);
      nodes.set(ev.seq, node);
      if (node === cur) cur = cur.nextSibling;
      else ui.feed.insertBefore(node, cur); // prepend/move without touching the rest
    }
    while (cur) {
      const next = cur.nextSibling;
      cur.remove();
      cur = next;
    }
    state.nodes = nodes;
    ui.feedEmpty.hidden = want.length > 0;
    ui.feedEmpty.textContent = state.events.length ? 'no event matches the filter' : 'no activity yet';
    ui.feedCount.textContent = state.events.length
      ? `${want.length} shown · ${matching} matching · ${state.events.length} kept` : '';
  }

  // ---------- wiring ----------

  function tick() {
    if (state.conn === 'reconnecting') renderConn();
    if (state.stats) renderBuiltins(); // uptime and "last event … ago" move on
  }

  function wire() {
    ui.feed.addEventListener('click', (e) => {
      if (e.target.closest('.detail')) return; // let people select the JSON
      const li = e.target.closest('.item');
      if (li) toggleItem(li);
    });
    ui.feed.addEventListener('keydown', (e) => {
      if ((e.key === 'Enter' || e.key === ' ') && e.target.classList.contains('item')) {
        e.preventDefault();
        toggleItem(e.target);
      }
    });
    ui.filter.addEventListener('input', applyFilter);
    ui.pause.addEventListener('click', () => {
      state.paused = !state.paused;
      ui.pause.setAttribute('aria-pressed', String(state.paused));
      ui.pause.textContent = state.paused ? 'resume' : 'pause';
      renderFeed(!state.paused);
    });
    $('notice-close').addEventListener('click', () => { ui.notice.hidden = true; });
    $('token-button').addEventListener('click', () => {
      if (ui.tokenForm.hidden) showTokenForm('Dashboard token (kept in this browser).');
      else ui.tokenForm.hidden = true;
    });
    $('token-clear').addEventListener('click', () => {
      saveToken(null);
      ui.tokenInput.value = '';
    });
    ui.tokenForm.addEventListener('submit', (e) => {
      e.preventDefault();
      saveToken(ui.tokenInput.value.trim());
      ui.tokenForm.hidden = true;
      setConn('connecting');
      reconnect(); // with the new token
    });
    window.addEventListener('resize', () => { if (state.history.length) renderSparks(); });
    setInterval(tick, 1000);
  }

  loadToken();
  wire();
  renderBuiltins();
  renderSparks();
  renderFeed(true);
  loadRecent();
  connect();
})();
