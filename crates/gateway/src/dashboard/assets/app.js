// The gateway's dashboard: reads `?data=series&since=CURSOR` every second and draws the plots on
// <canvas>, one section (plots, endpoints' table, state changes) per upstream group: the page's
// own for the first, copies of it for the others, each titled with its group's name when there
// are several. No libraries: everything here is served by the gateway itself.
'use strict';
(() => {
  const PALETTE = ['#4e9cf5', '#f5a524', '#3ec28f', '#e5484d', '#a78bfa', '#22c3d6', '#f472b6',
    '#a3e635', '#fb923c', '#94a3b8', '#2dd4bf', '#facc15', '#c084fc', '#60a5fa', '#f87171',
    '#4ade80', '#e879f9', '#fbbf24', '#38bdf8', '#d4d4d8'];
  const STATE_COLORS = {
    healthy: '#34b36b', slow_start: '#8bc34a', ejected: '#e5484d', unhealthy: '#e0a526',
    draining: '#9575cd', removed: '#6b7785', unknown: '#3a4556',
  };
  const ROLE_COLORS = { primary: '#4e9cf5', replica: '#4fb3bf' };
  const REFRESH_MS = 1000;

  let cursor = 0;
  let windowMs = 600000;
  let lastT = 0;
  let firstT = 0; // the oldest point kept
  // name -> { name, endpoints: Map(address -> state and points), events, highlight, dom }
  const groups = new Map();
  const colorOf = new Map(); // address -> colour, stable while the page is open
  const instances = new Map(); // address -> latest report and series (once across groups)

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v; else if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  };
  const color = (address) => {
    if (!colorOf.has(address)) colorOf.set(address, PALETTE[colorOf.size % PALETTE.length]);
    return colorOf.get(address);
  };
  const fmt = (v, digits) => (v == null || !isFinite(v)) ? '–'
    : v >= 1000 ? Math.round(v).toLocaleString('en') : v.toFixed(digits);
  const clock = (t) => new Date(t).toLocaleTimeString('en-GB', { hour12: false });
  const last = (a) => a.length ? a[a.length - 1] : null;
  const lastValue = (a) => { for (let i = a.length - 1; i >= 0; i--) if (a[i] != null) return a[i]; return null; };

  // ---- data ----

  function trim(t, ...columns) {
    let n = 0;
    const from = lastT - windowMs;
    while (n < t.length && t[n] < from) n++;
    if (n > 0) { t.splice(0, n); for (const c of columns) c.splice(0, n); }
  }

  // The section of the group at `index`: the page's own for the first, a copy for the others
  // (its ids suffixed), before the instances.
  function groupDom(index) {
    const ids = ['plots', 'side', 'plot-rps', 'plot-p99', 'plot-errors', 'timeline', 'endpoints', 'events'];
    const dom = { title: null, parts: [] };
    if (index === 0) {
      for (const id of ids) dom[id] = $(id);
    } else {
      for (const id of ['plots', 'side']) {
        const copy = $(id).cloneNode(true);
        for (const e of [copy, ...copy.querySelectorAll('[id]')]) {
          if (ids.includes(e.id)) dom[e.id] = e;
          e.id = `${e.id}-${index}`;
        }
        $('instances').before(copy);
        dom.parts.push(copy);
      }
    }
    return dom;
  }

  // Makes the page's sections those of `names`, in order (anew when the list changed).
  function setGroups(names) {
    const now = [...groups.keys()];
    if (now.length === names.length && now.every((n, i) => n === names[i])) return;
    for (const g of groups.values()) {
      for (const e of g.dom.parts) e.remove();
      if (g.dom.title) g.dom.title.remove();
    }
    groups.clear();
    const several = names.length > 1;
    document.querySelector('main').classList.toggle('groups', several);
    names.forEach((name, index) => {
      const g = { name, endpoints: new Map(), events: [], highlight: null, dom: groupDom(index) };
      if (several) {
        g.dom.title = el('h2', { class: 'group-title', 'data-group': name, text: name });
        g.dom.plots.before(g.dom.title);
      }
      for (const e of [g.dom.plots, g.dom.side]) e.dataset.group = name;
      hover(g, g.dom['plot-rps'], 'rps', 'req/s');
      hover(g, g.dom['plot-p99'], 'p99', 'ms');
      hover(g, g.dom['plot-errors'], 'errors', 'err/s');
      groups.set(name, g);
    });
  }

  function merge(d) {
    cursor = d.cursor;
    windowMs = (d.window_s || 600) * 1000;
    lastT = Math.max(lastT, d.cursor);
    setGroups((d.groups || [{ name: '' }]).map((g) => g.name));
    const groupOf = (item) => groups.get(item.group ?? '') || groups.values().next().value;
    const seen = new Set();
    for (const e of d.endpoints) {
      const g = groupOf(e);
      seen.add(g.name + '\n' + e.address);
      let s = g.endpoints.get(e.address);
      if (!s) {
        s = { t: [], rps: [], p99: [], errors: [] };
        g.endpoints.set(e.address, s);
      }
      Object.assign(s, {
        address: e.address, status: e.status, healthy: e.healthy, backup: e.backup, in_flight: e.in_flight,
        ewma_ms: e.ewma_ms, requests: e.requests, failures: e.failures, metrics_url: e.metrics_url,
      });
      s.t.push(...e.t); s.rps.push(...e.rps); s.p99.push(...e.p99_ms); s.errors.push(...e.errors);
      trim(s.t, s.rps, s.p99, s.errors);
    }
    for (const g of groups.values()) {
      for (const a of [...g.endpoints.keys()]) if (!seen.has(g.name + '\n' + a)) g.endpoints.delete(a);
    }
    for (const e of d.events) groupOf(e).events.push(e);
    for (const g of groups.values()) g.events = g.events.filter((e) => e.t >= lastT - windowMs).slice(-1000);

    const seenInstances = new Set();
    for (const i of d.instances) {
      seenInstances.add(i.address);
      let s = instances.get(i.address);
      if (!s) { s = { numbers: {}, texts: {} }; instances.set(i.address, s); }
      Object.assign(s, {
        address: i.address, status: i.status, error: i.error, checks: i.checks || {},
        polled_at: i.polled_at, metrics_url: i.metrics_url, health_path: d.health_path,
      });
      for (const [kind, columns] of [['numbers', 'v'], ['texts', 'v']]) {
        for (const [key, series] of Object.entries(i[kind] || {})) {
          const mine = s[kind][key] || (s[kind][key] = { unit: series.unit, t: [], v: [] });
          mine.t.push(...series.t); mine[columns].push(...series.v);
          trim(mine.t, mine.v);
        }
      }
    }
    for (const a of [...instances.keys()]) if (!seenInstances.has(a)) instances.delete(a);
    firstT = Math.min(...allEndpoints().map((s) => s.t.length ? s.t[0] : lastT), lastT);
  }

  const allEndpoints = () => [...groups.values()].flatMap((g) => [...g.endpoints.values()]);

  // The time shown: the whole window once it is full, else what there is (at least a minute),
  // so that a fresh page does not squeeze its first points against the right edge.
  const span = () => Math.min(windowMs, Math.max(60000, lastT - firstT));

  // ---- plots ----

  function sizeCanvas(canvas, cssHeight) {
    const ratio = window.devicePixelRatio || 1;
    if (cssHeight) canvas.style.height = cssHeight + 'px';
    const w = Math.max(50, canvas.clientWidth), h = Math.max(20, canvas.clientHeight);
    if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
      canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    return { ctx, w, h };
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 4, 8, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  const PAD = { l: 44, r: 8, t: 4, b: 14 };

  function axes(ctx, w, h, t0, t1, yMax, yFmt) {
    ctx.strokeStyle = '#273241'; ctx.fillStyle = '#8392a6'; ctx.lineWidth = 1;
    ctx.font = '10px system-ui, sans-serif';
    ctx.textAlign = 'right'; ctx.textBaseline = 'middle';
    for (let i = 0; i <= 4; i++) {
      const y = PAD.t + (h - PAD.t - PAD.b) * (1 - i / 4);
      ctx.beginPath(); ctx.moveTo(PAD.l, Math.round(y) + 0.5); ctx.lineTo(w - PAD.r, Math.round(y) + 0.5); ctx.stroke();
      ctx.fillText(yFmt(yMax * i / 4), PAD.l - 4, y);
    }
    ctx.textAlign = 'center'; ctx.textBaseline = 'top';
    const seconds = (t1 - t0) / 1000;
    const step = [10, 15, 30, 60, 120, 300].find((st) => seconds / st <= 6) || 600;
    for (let sec = 0; sec <= seconds; sec += step) {
      const x = PAD.l + (w - PAD.l - PAD.r) * (1 - sec / seconds);
      const label = sec === 0 ? 'now' : sec % 60 === 0 ? `-${sec / 60}m` : `-${sec}s`;
      ctx.fillText(label, x, h - PAD.b + 2);
    }
  }

  function eventMarks(g, ctx, w, h, t0, t1) {
    const xOf = (t) => PAD.l + (w - PAD.l - PAD.r) * (t - t0) / (t1 - t0);
    for (const e of g.events) {
      if (e.t < t0 || e.to === 'healthy' && e.from == null) continue;
      const x = Math.round(xOf(e.t)) + 0.5;
      ctx.strokeStyle = STATE_COLORS[e.to] || '#888';
      ctx.globalAlpha = e.to === 'ejected' || e.to === 'unhealthy' ? 0.9 : 0.5;
      ctx.setLineDash([3, 3]);
      ctx.beginPath(); ctx.moveTo(x, PAD.t); ctx.lineTo(x, h - PAD.b); ctx.stroke();
      ctx.setLineDash([]);
      ctx.globalAlpha = 1;
    }
  }

  // One line per endpoint; `null` values leave a gap. Returns the points drawn per endpoint.
  function linePlot(g, canvas, column, yFmt) {
    const { endpoints, highlight } = g;
    const { ctx, w, h } = sizeCanvas(canvas);
    const t1 = lastT || Date.now(), t0 = t1 - span();
    let max = 0;
    for (const s of endpoints.values()) for (const v of s[column]) if (v != null && v > max) max = v;
    const yMax = niceMax(max);
    axes(ctx, w, h, t0, t1, yMax, yFmt);
    eventMarks(g, ctx, w, h, t0, t1);
    const xOf = (t) => PAD.l + (w - PAD.l - PAD.r) * (t - t0) / (t1 - t0);
    const yOf = (v) => PAD.t + (h - PAD.t - PAD.b) * (1 - Math.min(v, yMax) / yMax);
    const drawn = {};
    const order = [...endpoints.values()].sort((a, b) => (a.address === highlight) - (b.address === highlight));
    for (const s of order) {
      let n = 0, open = false;
      ctx.strokeStyle = color(s.address);
      ctx.lineWidth = s.address === highlight ? 2.5 : 1.4;
      ctx.globalAlpha = highlight && s.address !== highlight ? 0.35 : 1;
      ctx.beginPath();
      for (let i = 0; i < s.t.length; i++) {
        const v = s[column][i];
        if (v == null || s.t[i] < t0) { open = false; continue; }
        const x = xOf(s.t[i]), y = yOf(v);
        if (open) ctx.lineTo(x, y); else { ctx.moveTo(x, y); open = true; }
        n++;
      }
      ctx.stroke();
      // A lone point (a gap on both sides) would not show as a line.
      if (n === 1) {
        const i = s[column].findIndex((v) => v != null);
        ctx.fillStyle = color(s.address);
        ctx.fillRect(xOf(s.t[i]) - 1.5, yOf(s[column][i]) - 1.5, 3, 3);
      }
      ctx.globalAlpha = 1;
      drawn[s.address] = n;
    }
    canvas.dataset.points = JSON.stringify(drawn);
    canvas.dataset.max = String(yMax);
  }

  // Each endpoint's state over time, as a coloured band per endpoint.
  function timeline(g, canvas) {
    const list = [...g.endpoints.values()];
    const rowH = Math.max(5, Math.min(14, Math.floor(140 / Math.max(1, list.length))));
    const { ctx, w, h } = sizeCanvas(canvas, list.length * rowH + PAD.b + 2);
    const t1 = lastT || Date.now(), t0 = t1 - span();
    const xOf = (t) => PAD.l + (w - PAD.l - PAD.r) * (Math.max(t, t0) - t0) / (t1 - t0);
    const drawnEvents = [];
    ctx.font = '9px system-ui, sans-serif'; ctx.textBaseline = 'middle'; ctx.textAlign = 'right';
    list.forEach((s, row) => {
      const mine = g.events.filter((e) => e.endpoint === s.address);
      const y = row * rowH + 1;
      let state = mine.length ? (mine[0].from || 'unknown') : s.status;
      let from = t0;
      const first = s.t.length ? s.t[0] : t1;
      if (!mine.length || mine[0].t > first) {
        // Before the first sample the page knows nothing.
        ctx.fillStyle = STATE_COLORS.unknown;
        ctx.fillRect(xOf(t0), y, xOf(first) - xOf(t0), rowH - 2);
        from = first;
      }
      for (const e of mine) {
        ctx.fillStyle = STATE_COLORS[state] || '#888';
        ctx.fillRect(xOf(from), y, Math.max(0, xOf(e.t) - xOf(from)), rowH - 2);
        drawnEvents.push({ endpoint: e.endpoint, from: e.from, to: e.to, t: e.t });
        state = e.to; from = e.t;
      }
      ctx.fillStyle = STATE_COLORS[state] || '#888';
      ctx.fillRect(xOf(from), y, Math.max(0, xOf(t1) - xOf(from)), rowH - 2);
      for (const e of mine) {
        if (e.to === 'ejected' || e.to === 'unhealthy' || e.to === 'draining') {
          ctx.fillStyle = '#fff';
          ctx.fillRect(Math.round(xOf(e.t)), y - 1, 2, rowH);
        }
      }
      ctx.fillStyle = color(s.address);
      ctx.fillRect(PAD.l - 8, y, 5, rowH - 2);
      if (rowH >= 9) { ctx.fillStyle = '#8392a6'; ctx.fillText(s.address.split(':').pop(), PAD.l - 10, y + rowH / 2); }
    });
    canvas.dataset.events = JSON.stringify(drawnEvents);
  }

  // A small multi-line plot for an instance card. `series`: [{label, t, v}].
  function sparkline(canvas, series, unitFmt) {
    const { ctx, w, h } = sizeCanvas(canvas);
    const t1 = lastT || Date.now(), t0 = t1 - span();
    let max = 0;
    for (const s of series) for (const v of s.v) if (v > max) max = v;
    const yMax = niceMax(max);
    const l = 34;
    const xOf = (t) => l + (w - l - 2) * (t - t0) / (t1 - t0);
    const yOf = (v) => 2 + (h - 4) * (1 - v / yMax);
    ctx.strokeStyle = '#273241'; ctx.beginPath(); ctx.moveTo(l, h - 1.5); ctx.lineTo(w, h - 1.5); ctx.stroke();
    ctx.fillStyle = '#8392a6'; ctx.font = '9px system-ui, sans-serif'; ctx.textAlign = 'right';
    ctx.textBaseline = 'top'; ctx.fillText(unitFmt(yMax), l - 3, 0);
    let points = 0;
    series.forEach((s, i) => {
      ctx.strokeStyle = PALETTE[(i + 5) % PALETTE.length]; ctx.lineWidth = 1.3; ctx.beginPath();
      s.t.forEach((t, j) => { if (t >= t0) { const x = xOf(t), y = yOf(s.v[j]); j ? ctx.lineTo(x, y) : ctx.moveTo(x, y); points++; } });
      ctx.stroke();
    });
    canvas.dataset.points = String(points);
  }

  // ---- page ----

  function renderPlots(g) {
    linePlot(g, g.dom['plot-rps'], 'rps', (v) => fmt(v, v < 10 ? 1 : 0));
    linePlot(g, g.dom['plot-p99'], 'p99', (v) => fmt(v, v < 10 ? 1 : 0));
    linePlot(g, g.dom['plot-errors'], 'errors', (v) => fmt(v, v < 10 ? 1 : 0));
    timeline(g, g.dom.timeline);
  }

  function render() {
    for (const g of groups.values()) {
      const list = [...g.endpoints.values()];
      for (const s of list) color(s.address);
      renderPlots(g);
      renderTable(g, list);
      renderEvents(g);
    }
    renderInstances();
    const list = allEndpoints();
    const healthy = list.filter((s) => s.healthy).length;
    const rps = list.reduce((a, s) => a + (last(s.rps) || 0), 0);
    const errors = list.reduce((a, s) => a + (last(s.errors) || 0), 0);
    const serving = [...groups.values()].filter((g) => [...g.endpoints.values()].some((s) => s.healthy)).length;
    $('summary').innerHTML = '';
    $('summary').append(
      el('span', {}, el('b', { text: `${healthy}/${list.length}` }), ' endpoints healthy · '),
      ...(groups.size > 1 ? [el('span', {}, el('b', { text: `${serving}/${groups.size}` }), ' groups serving · ')] : []),
      el('b', { text: fmt(rps, 1) }), ' req/s · ', el('b', { text: fmt(errors, 1) }), ' err/s');
  }

  function renderTable(g, list) {
    const body = g.dom.endpoints.tBodies[0];
    const rows = list.map((s) => {
      const tr = el('tr', { 'data-endpoint': s.address, 'data-points': String(s.t.length) },
        el('td', {}, el('span', { class: 'swatch' })),
        el('td', {}, s.address, ...(s.backup ? [' ', el('span', { class: 'muted', text: 'backup' })] : [])),
        el('td', {}, el('span', { class: `badge s-${s.status}`, text: s.status.replace('_', ' ') })),
        el('td', { text: fmt(last(s.rps), 1) }),
        el('td', { text: fmt(lastValue(s.p99), 2) }),
        el('td', { text: fmt(last(s.errors), 1) }),
        el('td', { text: String(s.in_flight) }),
        el('td', { text: fmt(s.ewma_ms, 2) }),
        el('td', { text: `${s.requests.toLocaleString('en')} / ${s.failures.toLocaleString('en')}` }),
        el('td', {}, el('a', { href: s.metrics_url, target: '_blank', rel: 'noopener', text: 'metrics' })));
      tr.firstChild.firstChild.style.background = color(s.address);
      if (s.address === g.highlight) tr.classList.add('hl');
      // Hovering a row brings its endpoint's lines forward.
      tr.addEventListener('mouseenter', () => { g.highlight = s.address; tr.classList.add('hl'); renderPlots(g); });
      tr.addEventListener('mouseleave', () => { g.highlight = null; tr.classList.remove('hl'); renderPlots(g); });
      return tr;
    });
    body.replaceChildren(...rows);
  }

  function renderEvents(g) {
    const ol = g.dom.events;
    const shown = g.events.slice(-30).reverse();
    ol.replaceChildren(...shown.map((e) => el('li', { 'data-to': e.to },
      `${clock(e.t)} `, el('b', { text: e.endpoint }), ` ${e.from || 'joined'} → `,
      el('span', { class: `badge s-${e.to}`, text: e.to.replace('_', ' ') }))));
    if (!shown.length) ol.replaceChildren(el('li', { text: 'none in the last 10 minutes' }));
  }

  // What the instances report: database roles and lag, cache, Redis nodes, session store.
  function renderInstances() {
    const section = $('instances');
    if (!instances.size) return;
    section.replaceChildren(...[...instances.values()].map(instanceCard));
  }

  const statusBadge = (status) => el('span', { class: `badge s-${status || 'unknown'}`, text: status || '?' });
  const checkName = (key) => key.slice(0, key.lastIndexOf(':'));
  const measurementOf = (key) => key.slice(key.lastIndexOf(':') + 1);

  function instanceCard(i) {
    const card = el('div', { class: 'card', 'data-instance': i.address });
    // An answer that is not a health report (a 404: no herd-health there) is not an outage.
    const noReport = i.error && /status \d{3}/.test(i.error);
    const status = i.error ? 'unreachable' : i.status;
    card.title = i.polled_at ? `health read at ${clock(i.polled_at)}` : 'not read yet';
    card.append(el('header', {}, el('h3', { text: i.address }),
      noReport ? el('span', { class: 'badge s-warn', text: 'no health report' }) : statusBadge(status),
      el('span', { class: 'spacer' }),
      el('a', { href: i.metrics_url, target: '_blank', rel: 'noopener', text: '/metrics' }),
      el('a', { href: `http://${i.address}${i.health_path}`, target: '_blank', rel: 'noopener', text: i.health_path })));
    if (i.error) card.append(el('div', { class: noReport ? 'row muted' : 'row error', text: i.error }));
    const checks = i.checks || {};
    const keys = Object.keys(checks);
    const used = new Set();

    // Databases: the checks that report node roles. Each node's role and lag now, the roles
    // over time (a band per node) and the replicas' lag over time.
    for (const roleKey of keys.filter((k) => measurementOf(k) === 'role')) {
      const name = checkName(roleKey);
      keys.filter((k) => checkName(k) === name).forEach((k) => used.add(k));
      const nodes = el('span', { class: 'nodes' });
      for (const node of checks[roleKey]) {
        nodes.append(el('span', { title: node.output || '' }, statusBadge(node.status), ` ${node.componentId}: `,
          el('b', { text: String(node.observedValue) })));
      }
      card.append(kv(name, nodes));
      const roles = Object.entries(i.texts).filter(([k]) => k.startsWith(`${name}:role@`));
      if (roles.length) {
        const bands = el('canvas', { class: 'roles', 'data-nodes': String(roles.length) });
        const legend = el('span', { class: 'nodes' }, ...Object.entries(ROLE_COLORS).map(([role, c]) => {
          const sw = el('span', { class: 'swatch' }); sw.style.background = c;
          return el('span', {}, sw, role);
        }));
        card.append(kv('roles', legend, bands));
        requestAnimationFrame(() => roleBands(bands, roles));
      }
      const lags = Object.entries(i.numbers).filter(([k]) => k.startsWith(`${name}:lagTime@`))
        .map(([k, s]) => ({ label: k.split('@')[1], t: s.t, v: s.v }));
      if (lags.length) {
        const canvas = el('canvas', { class: 'lag' });
        card.append(kv('replica lag', el('span', { text: lags.map((l) => `${l.label} ${fmt(last(l.v), 2)} s`).join(' · ') }), canvas));
        requestAnimationFrame(() => sparkline(canvas, lags, (v) => `${fmt(v, 1)}s`));
      }
    }

    // Caches: the checks that report a cluster state or a hit ratio, or say so by name; their
    // nodes are Redis'.
    const caches = new Set(keys.filter((k) => ['clusterState', 'hitRatio', 'circuit'].includes(measurementOf(k))
      || /cache|redis/i.test(checkName(k))).map(checkName));
    for (const name of caches) {
      keys.filter((k) => checkName(k) === name).forEach((k) => used.add(k));
      const ratio = i.numbers[`${name}:hitRatio`];
      const reported = ratio && ratio.v.length;
      const canvas = reported ? el('canvas', { class: 'hit-ratio' }) : null;
      card.append(kv(`${name} hit ratio`, el('span', { class: 'hit-ratio',
        text: reported ? `${fmt(last(ratio.v), 1)} %` : 'not reported yet (no lookups)' }), canvas));
      if (canvas) requestAnimationFrame(() => sparkline(canvas, [{ label: 'hit ratio', t: ratio.t, v: ratio.v }], (v) => `${fmt(v, 0)}%`));
      const cluster = (checks[`${name}:clusterState`] || [])[0];
      const nodes = (checks[`${name}:responseTime`] || []).filter((e) => e.componentId);
      const list = el('span', { class: 'nodes' });
      if (cluster) list.append(el('span', {}, 'cluster ', statusBadge(cluster.observedValue === 'ok' ? 'pass' : 'fail')));
      for (const n of nodes) {
        const dot = el('span', { class: `dot s-${n.status}` });
        list.append(el('span', { title: n.output || '' }, dot, `${n.componentId} ${n.observedValue != null ? fmt(n.observedValue, 1) + ' ms' : n.status}`));
      }
      const row = kv('Redis nodes', list);
      row.classList.add('redis-nodes');
      row.dataset.nodes = String(nodes.length);
      card.append(row);
    }

    // Session stores.
    for (const name of new Set(keys.filter((k) => /session/i.test(k)).map(checkName))) {
      if (keys.some((k) => used.has(k) && checkName(k) === name)) continue;
      keys.filter((k) => checkName(k) === name).forEach((k) => used.add(k));
      const entry = (checks[`${name}:responseTime`] || [])[0] || {};
      card.append(kv(name, el('span', { class: 'session' }, statusBadge(entry.status),
        ` ${entry.observedValue != null ? fmt(entry.observedValue, 1) + ' ms' : ''}`,
        entry.output ? el('span', { class: 'error', text: ` ${entry.output}` }) : null)));
    }

    // Everything else, so that nothing an instance reports is hidden.
    const rest = [...new Set(keys.filter((k) => !used.has(k)).map(checkName))];
    if (rest.length) {
      const row = el('span', { class: 'nodes' });
      for (const name of rest) {
        const entry = (checks[`${name}:responseTime`] || checks[name] || [])[0] || {};
        row.append(el('span', { title: entry.output || '' }, el('span', { class: `dot s-${entry.status || 'unknown'}` }),
          name, entry.observedValue != null && typeof entry.observedValue !== 'object' ? ` ${fmt(+entry.observedValue, 0)}${entry.observedUnit ? ' ' + entry.observedUnit : ''}` : ''));
      }
      card.append(kv('other', row));
    }
    return card;
  }

  // One line of a card: a label, what it says now, and optionally a plot of it over time.
  function kv(label, value, canvas) {
    const row = el('div', { class: 'kv' }, el('span', { class: 'label', text: label, title: label }), value, canvas);
    if (!canvas) value.style.gridColumn = '2 / 4';
    return row;
  }

  function roleBands(canvas, roles) {
    const rowH = 7;
    const { ctx, w } = sizeCanvas(canvas, roles.length * rowH + 2);
    const t1 = lastT || Date.now(), t0 = t1 - span();
    const l = 34;
    const xOf = (t) => l + (w - l - 2) * (Math.max(t, t0) - t0) / (t1 - t0);
    roles.forEach(([, s], row) => {
      for (let j = 0; j < s.t.length; j++) {
        const end = j + 1 < s.t.length ? s.t[j + 1] : t1;
        ctx.fillStyle = ROLE_COLORS[s.v[j]] || STATE_COLORS.ejected;
        ctx.fillRect(xOf(s.t[j]), row * rowH + 1, Math.max(1, xOf(end) - xOf(s.t[j])), rowH - 2);
      }
    });
  }

  // Hovering a plot shows every endpoint's value at that time.
  // (Bound once per canvas: a new list of groups hands the first section's canvases to the new
  // first group.)
  function hover(g, canvas, column, unit) {
    const tip = $('tooltip');
    const bound = canvas.hoverGroup !== undefined;
    canvas.hoverGroup = g;
    if (bound) return;
    canvas.addEventListener('mousemove', (ev) => {
      const g = canvas.hoverGroup;
      const r = canvas.getBoundingClientRect();
      const t1 = lastT, t0 = t1 - span();
      const t = t0 + (t1 - t0) * (ev.clientX - r.left - PAD.l) / (r.width - PAD.l - PAD.r);
      const lines = [];
      for (const s of g.endpoints.values()) {
        let best = -1, dist = Infinity;
        s.t.forEach((x, j) => { const d = Math.abs(x - t); if (d < dist) { dist = d; best = j; } });
        if (best >= 0 && dist < 5000) lines.push([s.address, s[column][best]]);
      }
      if (!lines.length) { tip.hidden = true; return; }
      tip.replaceChildren(el('div', { class: 'muted', text: clock(t) }), ...lines.map(([a, v]) => {
        const sw = el('span', { class: 'swatch' }); sw.style.background = color(a);
        return el('div', {}, sw, `${a}  ${fmt(v, 2)} ${unit}`);
      }));
      tip.hidden = false;
      tip.style.left = `${Math.min(ev.clientX + 12, window.innerWidth - tip.offsetWidth - 4)}px`;
      tip.style.top = `${ev.clientY + 12}px`;
    });
    canvas.addEventListener('mouseleave', () => { tip.hidden = true; });
  }

  function legend() {
    const l = $('state-legend');
    for (const s of ['healthy', 'slow_start', 'ejected', 'unhealthy', 'draining']) {
      const i = el('i'); i.style.background = STATE_COLORS[s];
      l.append(el('span', {}, i, s.replace('_', ' ')));
    }
  }

  async function refresh() {
    try {
      const res = await fetch(`?data=series&since=${cursor}`, { cache: 'no-store' });
      if (!res.ok) throw new Error(`status ${res.status}`);
      const d = await res.json();
      merge(d);
      render();
      $('status').textContent = d.sampling ? `updated ${clock(d.cursor)}` : 'no sampler running';
      document.body.dataset.updates = String((+document.body.dataset.updates || 0) + 1);
    } catch (e) {
      $('status').textContent = `update failed: ${e.message}`;
    }
    setTimeout(refresh, REFRESH_MS);
  }

  document.addEventListener('DOMContentLoaded', () => {
    legend();
    window.addEventListener('resize', () => render());
    refresh();
  });
})();
