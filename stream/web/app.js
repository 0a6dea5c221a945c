// geoincident console: the dispatchers' live page. Plain JavaScript, no build step, no CDN.
// Every piece of data is put on the page with textContent / setAttribute, never as markup.
"use strict";

(() => {
  const TOKEN_KEY = "geoincident.console.token";
  const NAME_KEY = "geoincident.console.by";
  const TITLE = "geoincident console";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const STATE_ORDER = { new: 0, acknowledged: 1, assigned: 2, resolved: 3 };
  const PALETTE = {
    streetlight_out: "#d4a72c",
    traffic_signal_out: "#e16f24",
    road_flooding: "#0969da",
    pothole: "#6e7781",
    water_main_break: "#1b7c83",
    downed_tree: "#2da44e",
    gas_leak: "#cf222e",
    power_outage: "#8250df",
  };

  const state = {
    config: { tile_url: null, read_protected: false, actions_enabled: true },
    incidents: new Map(), // incident_id -> item (latest event + state)
    unseen: new Set(), // arrived live and not looked at yet
    selected: null,
    history: [],
    caughtUp: false,
    loaded: false,
    pending: new Map(), // incident_id -> {action, version, label, sent}
    notice: null, // {incidentId, text, kind}
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null) node.setAttribute(key, String(value));
    }
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function colorOf(category) {
    if (PALETTE[category]) return PALETTE[category];
    let hash = 0;
    for (const ch of String(category)) hash = (hash * 31 + ch.codePointAt(0)) | 0;
    return `hsl(${Math.abs(hash) % 360}, 60%, 45%)`;
  }

  // ------------------------------------------------------------------ token and requests

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function authHeaders() {
    const t = token();
    return t ? { Authorization: `Bearer ${t}` } : {};
  }

  async function askToken(reason) {
    const values = await ask(
      "Dispatcher sign-in",
      reason || "Enter your console token. It is kept for this browser tab only.",
      [
        { name: "token", label: "Token", type: "password", required: true },
        {
          name: "by",
          label: "Your name or id (shown as acknowledged_by)",
          value: sessionStorage.getItem(NAME_KEY) || "",
        },
      ],
    );
    if (!values || !values.token.trim()) return null;
    sessionStorage.setItem(TOKEN_KEY, values.token.trim());
    if (values.by.trim()) sessionStorage.setItem(NAME_KEY, values.by.trim());
    else sessionStorage.removeItem(NAME_KEY);
    renderHeader();
    for (const wake of tokenWaiters.splice(0)) wake();
    return token();
  }

  const tokenWaiters = []; // the live feed, waiting for a sign-in it was refused without
  function tokenGiven() {
    return new Promise((resolve) => tokenWaiters.push(resolve));
  }

  async function getJSON(path) {
    for (let attempt = 0; attempt < 2; attempt++) {
      const res = await fetch(path, { headers: authHeaders(), cache: "no-store" });
      if (res.status === 401 && attempt === 0) {
        sessionStorage.removeItem(TOKEN_KEY);
        if (!(await askToken("Reading this console needs a token."))) break;
        continue;
      }
      if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
      return res.json();
    }
    throw new Error(`${path}: no token`);
  }

  // ---------------------------------------------------------------------------- dialogs

  // one dialog at a time: a second question waits for the first to be answered
  let dialogQueue = Promise.resolve();
  function ask(title, text, fields) {
    const shown = dialogQueue.then(() => showDialog(title, text, fields));
    dialogQueue = shown.catch(() => null);
    return shown;
  }

  function showDialog(title, text, fields) {
    const dialog = $("ask");
    $("ask-title").textContent = title;
    $("ask-text").textContent = text || "";
    const inputs = [];
    const nodes = fields.map((f) => {
      let input;
      if (f.options) {
        input = el("select", { name: f.name, required: f.required });
        for (const option of f.options) input.append(el("option", { value: option, text: option }));
      } else {
        input = el("input", {
          name: f.name,
          type: f.type || "text",
          required: f.required,
          autocomplete: "off",
        });
        input.value = f.value || "";
      }
      inputs.push(input);
      return el("label", {}, f.label, input);
    });
    $("ask-fields").replaceChildren(...nodes);
    return new Promise((resolve) => {
      dialog.addEventListener(
        "close",
        () => {
          if (dialog.returnValue !== "ok") return resolve(null);
          const values = {};
          for (const input of inputs) values[input.name] = input.value;
          resolve(values);
        },
        { once: true },
      );
      dialog.returnValue = "";
      dialog.showModal();
      if (inputs.length) inputs[0].focus();
    });
  }

  // --------------------------------------------------------------------------- the data

  function take(item, live) {
    const known = state.incidents.get(item.incident_id);
    if (known && known.version >= item.version) return false;
    state.incidents.set(item.incident_id, item);
    if (live && state.caughtUp && state.loaded) {
      if (!known && item.state !== "resolved") state.unseen.add(item.incident_id);
      else flashes.add(item.incident_id);
    }
    const pending = state.pending.get(item.incident_id);
    if (pending && item.version > pending.version) {
      state.pending.delete(item.incident_id);
      setNotice(
        item.incident_id,
        `${pending.label} applied by the worker: version ${item.version} (${item.event}), now ${item.state}.`,
        "ok",
      );
    }
    return true;
  }

  async function loadAll() {
    const data = await getJSON("/api/incidents");
    const fresh = new Map();
    for (const item of data.incidents) {
      const known = state.incidents.get(item.incident_id);
      fresh.set(item.incident_id, known && known.version > item.version ? known : item);
    }
    state.incidents = fresh;
    state.caughtUp = state.caughtUp || data.caught_up;
    state.loaded = true;
    render();
    if (state.selected) loadDetail(state.selected);
  }

  async function loadDetail(id) {
    try {
      const data = await getJSON(`/api/incidents/${encodeURIComponent(id)}`);
      if (state.selected !== id) return;
      take(data.incident, false);
      state.history = data.history;
    } catch (err) {
      if (state.selected === id) state.history = [];
    }
    renderDetail();
  }

  // --------------------------------------------------------------------- live updates

  const flashes = new Set();

  function setConn(text, ok) {
    const node = $("conn");
    node.textContent = text;
    node.className = `conn ${ok ? "conn-ok" : "conn-bad"}`;
  }

  function onMessage(kind, data) {
    if (kind === "incident") {
      if (take(data, true)) {
        scheduleRender();
        if (data.incident_id === state.selected) loadDetail(data.incident_id);
      }
    } else if (kind === "refused") {
      const pending = state.pending.get(data.incident_id);
      if (pending && pending.action === data.action) {
        state.pending.delete(data.incident_id);
        setNotice(
          data.incident_id,
          `${pending.label} refused by the worker: ${data.reason}: ${data.detail}`,
          "error",
        );
      }
    } else if (kind === "gone") {
      for (const id of data.incident_ids || []) {
        state.incidents.delete(id);
        state.unseen.delete(id);
      }
      scheduleRender();
    } else if (kind === "status") {
      if (data.caught_up && !state.caughtUp) {
        state.caughtUp = true;
        scheduleRender();
      }
    }
  }

  async function stream() {
    let backoff = 500;
    for (;;) {
      try {
        const res = await fetch("/api/events", { headers: authHeaders(), cache: "no-store" });
        if (res.status === 401) {
          setConn("sign-in needed", false);
          sessionStorage.removeItem(TOKEN_KEY);
          renderHeader();
          if (!(await askToken("Reading this console needs a token."))) await tokenGiven();
          continue;
        }
        if (!res.ok || !res.body) throw new Error(`events: HTTP ${res.status}`);
        setConn("live", true);
        backoff = 500;
        await loadAll(); // after subscribing: nothing can fall between the two
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n?/g, "\n");
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            let kind = "message";
            const data = [];
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) kind = line.slice(6).trim();
              else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
            }
            if (data.length) {
              try {
                onMessage(kind, JSON.parse(data.join("\n")));
              } catch (err) {
                console.warn("bad event", err);
              }
            }
          }
        }
      } catch (err) {
        console.warn(err);
      }
      setConn("reconnecting…", false);
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 10000);
    }
  }

  // ------------------------------------------------------------------------- rendering

  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      render();
    });
  }

  function render() {
    $("loading").hidden = state.caughtUp;
    renderFilters();
    const items = visible();
    renderRows(items);
    renderMap(items);
    renderHeader();
    renderDetail();
  }

  function filters() {
    return {
      status: $("f-status").value,
      category: $("f-category").value,
      jurisdiction: $("f-jurisdiction").value,
      sort: $("f-sort").value,
    };
  }

  function visible() {
    const f = filters();
    const out = [];
    for (const item of state.incidents.values()) {
      if (f.status === "active" && item.state === "resolved") continue;
      if (!["active", "all"].includes(f.status) && item.state !== f.status) continue;
      if (f.category && item.category !== f.category) continue;
      if (f.jurisdiction) {
        const place = item.jurisdiction === null || item.jurisdiction === undefined ? "-" : item.jurisdiction;
        if (place !== f.jurisdiction) continue;
      }
      out.push(item);
    }
    const text = (v) => (v === null || v === undefined ? "" : String(v));
    const byNewest = (a, b) => text(b.validated_at).localeCompare(text(a.validated_at));
    const sorters = {
      newest: byNewest,
      oldest: (a, b) => -byNewest(a, b),
      category: (a, b) => text(a.category).localeCompare(text(b.category)) || byNewest(a, b),
      jurisdiction: (a, b) =>
        text(a.jurisdiction).localeCompare(text(b.jurisdiction)) || byNewest(a, b),
      status: (a, b) => STATE_ORDER[a.state] - STATE_ORDER[b.state] || byNewest(a, b),
      confidence: (a, b) => b.confidence - a.confidence || byNewest(a, b),
      reporters: (a, b) => b.independent_reporters - a.independent_reporters || byNewest(a, b),
    };
    out.sort(sorters[f.sort] || byNewest);
    return out;
  }

  function fillSelect(select, values, labelOf) {
    const key = JSON.stringify(values);
    if (select.dataset.values === key) return; // rebuilt only when it changes (keeps it open)
    select.dataset.values = key;
    const current = select.value;
    const options = [el("option", { value: "", text: "all" })];
    for (const value of values) options.push(el("option", { value, text: labelOf(value) }));
    select.replaceChildren(...options);
    select.value = values.includes(current) ? current : "";
  }

  function renderFilters() {
    const categories = new Map();
    const places = new Set();
    for (const item of state.incidents.values()) {
      categories.set(item.category, item.category_text || item.category);
      places.add(item.jurisdiction === null || item.jurisdiction === undefined ? "-" : item.jurisdiction);
    }
    fillSelect($("f-category"), [...categories.keys()].sort(), (v) => categories.get(v));
    fillSelect($("f-jurisdiction"), [...places].sort(), (v) => (v === "-" ? "(none)" : v));
  }

  function age(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return "?";
    const s = Math.max(0, Math.round((Date.now() - t) / 1000));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${m % 60} min`;
    return `${Math.floor(h / 24)} d`;
  }

  function pill(itemState) {
    return el("span", { class: `pill st-${itemState}`, "data-field": "status", text: itemState });
  }

  function shortId(id) {
    return id ? String(id).slice(0, 12) : "";
  }

  function renderRows(items) {
    const members = new Map(); // surge id -> local incidents filed under it
    for (const other of state.incidents.values()) {
      if (other.surge_id && other.state !== "resolved") members.set(other.surge_id, (members.get(other.surge_id) || 0) + 1);
    }
    const rows = items.map((item) => {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = colorOf(item.category);
      const classes = [];
      if (state.unseen.has(item.incident_id)) classes.push("unseen");
      if (flashes.has(item.incident_id)) classes.push("flash");
      if (item.incident_id === state.selected) classes.push("selected");
      const surge =
        item.kind === "surge"
          ? el("span", { class: "small", text: `${members.get(item.incident_id) || 0} incidents` })
          : item.surge_id
            ? el("span", { class: "mono", title: item.surge_id, text: shortId(item.surge_id) })
            : el("span", { class: "small", text: "—" });
      return el(
        "tr",
        {
          class: classes.join(" "),
          "data-id": item.incident_id,
          "data-state": item.state,
          onclick: () => select(item.incident_id),
        },
        el(
          "td",
          {},
          el(
            "div",
            { class: "cat" },
            swatch,
            el("span", { "data-field": "category", title: item.category, text: item.category_text || item.category }),
            item.kind === "surge" ? el("span", { class: "kind", text: "surge" }) : null,
            state.unseen.has(item.incident_id) ? el("span", { class: "newtag", text: "NEW" }) : null,
          ),
          el("div", { class: "small mono", text: item.incident_id }),
        ),
        el(
          "td",
          {},
          el("div", { "data-field": "jurisdiction", text: item.jurisdiction ?? "(no jurisdiction)" }),
          el("div", { class: "small mono", text: `${fmt(item.lat, 5)}, ${fmt(item.lon, 5)}` }),
        ),
        el("td", { title: item.validated_at, text: age(item.validated_at) }),
        el("td", { text: item.independent_reporters }),
        el("td", { text: pct(item.confidence) }),
        el("td", {}, pill(item.state)),
        el("td", {}, surge),
      );
    });
    flashes.clear();
    $("rows").replaceChildren(...rows);
    $("empty").hidden = items.length > 0 || !state.loaded;
  }

  function fmt(value, digits) {
    return typeof value === "number" ? value.toFixed(digits) : "?";
  }

  function when(iso) {
    return iso ? String(iso).replace("T", " ").replace(/(\.\d+)?Z$/, " UTC") : iso;
  }

  function pct(value) {
    return typeof value === "number" ? `${Math.round(value * 100)} %` : "?";
  }

  function renderHeader() {
    let open = 0;
    for (const item of state.incidents.values()) if (item.state !== "resolved") open++;
    $("summary").textContent = `${open} open · ${state.incidents.size} on the page`;
    const n = state.unseen.size;
    const badge = $("unseen");
    badge.hidden = n === 0;
    badge.textContent = `${n} new`;
    document.title = n ? `(${n}) ${TITLE}` : TITLE;
    $("token-btn").textContent = token()
      ? `Signed in${sessionStorage.getItem(NAME_KEY) ? ` as ${sessionStorage.getItem(NAME_KEY)}` : ""} · sign out`
      : "Sign in…";
  }

  // ------------------------------------------------------------------------------- map

  function ringsOf(item) {
    const g = item.geometry;
    if (g && g.type === "Polygon" && Array.isArray(g.coordinates)) return g.coordinates;
    if (g && g.type === "MultiPolygon" && Array.isArray(g.coordinates)) return g.coordinates.flat();
    return [];
  }

  function mercY(lat) {
    const r = (Math.max(-85, Math.min(85, lat)) * Math.PI) / 180;
    return (1 - Math.log(Math.tan(r) + 1 / Math.cos(r)) / Math.PI) / 2;
  }

  function renderMap(items) {
    const svg = $("map");
    const width = svg.clientWidth || 600;
    const height = svg.clientHeight || 360;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const layers = [];
    let lonMin = Infinity;
    let lonMax = -Infinity;
    let latMin = Infinity;
    let latMax = -Infinity;
    const extend = (lon, lat) => {
      if (typeof lon !== "number" || typeof lat !== "number") return;
      lonMin = Math.min(lonMin, lon);
      lonMax = Math.max(lonMax, lon);
      latMin = Math.min(latMin, lat);
      latMax = Math.max(latMax, lat);
    };
    for (const item of items) {
      extend(item.lon, item.lat);
      for (const ring of ringsOf(item)) for (const p of ring) extend(p[0], p[1]);
    }
    if (!Number.isFinite(lonMin)) {
      layers.push(svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, "No incident to draw."));
      svg.replaceChildren(...layers);
      $("map-note").textContent = "";
      return;
    }
    // at least ~1 km across, and 15 % of padding around the incidents
    const midLat = (latMin + latMax) / 2;
    const minSpan = 0.01;
    if (latMax - latMin < minSpan) [latMin, latMax] = [midLat - minSpan / 2, midLat + minSpan / 2];
    const midLon = (lonMin + lonMax) / 2;
    const kx = Math.cos((midLat * Math.PI) / 180);
    if ((lonMax - lonMin) * kx < minSpan) [lonMin, lonMax] = [midLon - minSpan / kx / 2, midLon + minSpan / kx / 2];
    const padLat = (latMax - latMin) * 0.15;
    const padLon = (lonMax - lonMin) * 0.15;
    latMin -= padLat;
    latMax += padLat;
    lonMin -= padLon;
    lonMax += padLon;

    // projection to world units, then fitted to the box: equirectangular, or Web Mercator
    // when a tile basemap is configured (its tiles are in that projection)
    const tiles = state.config.tile_url;
    const wx = tiles ? (lon) => (lon + 180) / 360 : (lon) => lon * kx;
    const wy = tiles ? (lat) => mercY(lat) : (lat) => -lat;
    const x0 = wx(lonMin);
    const x1 = wx(lonMax);
    const y0 = wy(latMax);
    const y1 = wy(latMin);
    const scale = Math.min(width / (x1 - x0), height / (y1 - y0));
    const ox = (width - (x1 - x0) * scale) / 2;
    const oy = (height - (y1 - y0) * scale) / 2;
    const X = (lon) => ox + (wx(lon) - x0) * scale;
    const Y = (lat) => oy + (wy(lat) - y0) * scale;

    if (tiles) {
      const group = svgEl("g", { class: "tiles" });
      const z = Math.max(0, Math.min(19, Math.floor(Math.log2(scale / 256))));
      const n = 2 ** z;
      const size = scale / n;
      const left = wx(lonMin) - ox / scale;
      const top = wy(latMax) - oy / scale;
      const tx0 = Math.max(0, Math.floor(left * n));
      const ty0 = Math.max(0, Math.floor(top * n));
      const tx1 = Math.min(n - 1, Math.floor((left + width / scale) * n));
      const ty1 = Math.min(n - 1, Math.floor((top + height / scale) * n));
      for (let tx = tx0; tx <= tx1 && tx - tx0 < 16; tx++) {
        for (let ty = ty0; ty <= ty1 && ty - ty0 < 16; ty++) {
          const href = tiles.replace("{z}", z).replace("{x}", tx).replace("{y}", ty);
          group.append(
            svgEl("image", {
              href,
              x: ox + (tx / n - x0) * scale,
              y: oy + (ty / n - y0) * scale,
              width: size + 0.5,
              height: size + 0.5,
              preserveAspectRatio: "none",
            }),
          );
        }
      }
      layers.push(group);
    } else {
      layers.push(graticule(width, height, X, Y, lonMin, lonMax, latMin, latMax));
    }

    const shapes = svgEl("g", { class: "shapes" });
    const markers = svgEl("g", { class: "markers" });
    // surges (large) first, so the local incidents stay clickable on top
    const ordered = [...items].sort((a, b) => (a.kind === "surge" ? -1 : 0) - (b.kind === "surge" ? -1 : 0));
    for (const item of ordered) {
      const color = colorOf(item.category);
      const selected = item.incident_id === state.selected;
      const extra = `${item.state === "resolved" ? " resolved" : ""}${selected ? " sel" : ""}${item.kind === "surge" ? " surge" : ""}`;
      const label = `${item.category_text || item.category} · ${item.state} · ${item.independent_reporters} reporters · ${item.jurisdiction ?? "no jurisdiction"}`;
      const rings = ringsOf(item);
      if (rings.length) {
        const d = rings
          .map((ring) => ring.map((p, i) => `${i ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("") + "Z")
          .join("");
        const path = svgEl("path", { d, class: `shape${extra}`, fill: color, stroke: color, "fill-rule": "evenodd", "data-id": item.incident_id });
        path.append(svgEl("title", {}, label));
        path.addEventListener("click", () => select(item.incident_id));
        shapes.append(path);
      }
      const marker = svgEl("circle", {
        cx: X(item.lon).toFixed(1),
        cy: Y(item.lat).toFixed(1),
        r: item.kind === "surge" ? 8 : 6,
        fill: color,
        class: `marker${extra}`,
        "data-id": item.incident_id,
      });
      marker.append(svgEl("title", {}, label));
      marker.addEventListener("click", () => select(item.incident_id));
      markers.append(marker);
      if (selected) {
        // the selected incident's member reports, where they were sent from
        for (const m of item.members || []) {
          if (typeof m.lat !== "number" || typeof m.lon !== "number") continue;
          const dot = svgEl("circle", { cx: X(m.lon).toFixed(1), cy: Y(m.lat).toFixed(1), r: 3, fill: color, class: "member" });
          dot.append(svgEl("title", {}, `${m.id} · ${when(m.at) || m.at} · ${m.source ?? "no source"}`));
          markers.append(dot);
        }
      }
    }
    layers.push(shapes, markers, scaleBar(width, height, X, midLat, lonMin));
    svg.replaceChildren(...layers);
    $("map-note").textContent = tiles
      ? `${items.length} shown · basemap tiles from the configured server`
      : `${items.length} shown · equirectangular, fitted to the incidents · works offline`;
  }

  function niceStep(span, target) {
    const raw = span / target;
    const p = 10 ** Math.floor(Math.log10(raw));
    for (const m of [1, 2, 5, 10]) if (raw <= m * p) return m * p;
    return 10 * p;
  }

  function graticule(width, height, X, Y, lonMin, lonMax, latMin, latMax) {
    const group = svgEl("g", { class: "graticule" });
    const lonStep = niceStep(lonMax - lonMin, 5);
    const latStep = niceStep(latMax - latMin, 4);
    const decimals = (step) => Math.max(0, -Math.floor(Math.log10(step)));
    for (let lon = Math.ceil(lonMin / lonStep) * lonStep; lon <= lonMax; lon += lonStep) {
      const x = X(lon);
      group.append(svgEl("line", { x1: x, x2: x, y1: 0, y2: height, class: "grid" }));
      group.append(svgEl("text", { x: x + 3, y: 12, class: "grid-label" }, `${lon.toFixed(decimals(lonStep))}°`));
    }
    for (let lat = Math.ceil(latMin / latStep) * latStep; lat <= latMax; lat += latStep) {
      const y = Y(lat);
      group.append(svgEl("line", { x1: 0, x2: width, y1: y, y2: y, class: "grid" }));
      group.append(svgEl("text", { x: 3, y: y - 3, class: "grid-label" }, `${lat.toFixed(decimals(latStep))}°`));
    }
    return group;
  }

  function scaleBar(width, height, X, midLat, lonMin) {
    const metresPerDegLon = 111320 * Math.cos((midLat * Math.PI) / 180);
    const pxPerMetre = (X(lonMin + 1) - X(lonMin)) / metresPerDegLon;
    const metres = niceStep(120 / pxPerMetre, 1);
    const px = metres * pxPerMetre;
    const x = width - px - 16;
    const y = height - 14;
    const group = svgEl("g", {});
    group.append(svgEl("line", { x1: x, x2: x + px, y1: y, y2: y, class: "scale" }));
    group.append(
      svgEl("text", { x: x + px / 2, y: y - 5, "text-anchor": "middle", class: "scale-label" }, metres >= 1000 ? `${metres / 1000} km` : `${metres} m`),
    );
    return group;
  }

  // ------------------------------------------------------------------- incident panel

  function select(id) {
    state.selected = id;
    state.history = [];
    state.unseen.delete(id);
    if (state.notice && state.notice.incidentId !== id) state.notice = null;
    if (location.hash !== `#${id}`) history.replaceState(null, "", `#${encodeURIComponent(id)}`);
    render();
    loadDetail(id);
  }

  function setNotice(incidentId, text, kind) {
    state.notice = { incidentId, text, kind };
    renderDetail();
  }

  function row(dl, label, value) {
    if (value === undefined || value === null || value === "") return;
    dl.append(el("dt", { text: label }), el("dd", { text: value }));
  }

  function renderDetail() {
    const panel = $("detail");
    const item = state.incidents.get(state.selected);
    if (!item) {
      panel.replaceChildren(
        el("p", { class: "hint", text: state.selected ? "This incident is no longer on the page." : "Select an incident in the list or on the map." }),
      );
      return;
    }
    const local = item.kind !== "surge";
    const resolved = item.state === "resolved";
    const nodes = [];
    nodes.push(
      el("h2", {}, el("span", { "data-field": "category", title: item.category, text: item.category_text || item.category }), " ", pill(item.state)),
      el("div", { class: "mono small", text: `${item.incident_id} · ${item.kind} · version ${item.version} (${item.event})` }),
    );

    const buttons = el("div", { class: "actions" });
    const button = (label, enabled, handler, primary) =>
      el("button", { type: "button", "data-action": label, class: primary ? "primary" : "", disabled: !enabled || !state.config.actions_enabled, onclick: handler, text: label });
    buttons.append(
      button("Acknowledge", local && item.status === "open", () => act(item, { action: "ack" }, "Acknowledge"), true),
      button("Assign", local && !resolved, () => assign(item)),
      button("Resolve", !resolved, () => resolve(item)),
      button("Reopen", local && resolved, () => act(item, { action: "reopen" }, "Reopen")),
      button("Flag report", local && (item.report_ids || []).length > 0, () => flag(item)),
      button("Block reporter", local, () => block(item)),
    );
    nodes.push(buttons);
    if (!state.config.actions_enabled) {
      nodes.push(el("div", { class: "notice error", text: "Actions are disabled: this console has no token configured." }));
    }
    if (state.notice && state.notice.incidentId === item.incident_id) {
      nodes.push(el("div", { class: `notice ${state.notice.kind}`, id: "notice", text: state.notice.text }));
    }

    const dl = el("dl");
    row(dl, "Place", `${fmt(item.lat, 7)}, ${fmt(item.lon, 7)}`);
    row(dl, "Jurisdiction", item.jurisdiction ?? "(none)");
    row(dl, "Radius", typeof item.radius_m === "number" ? `${item.radius_m} m` : null);
    row(dl, "Reporters", `${item.independent_reporters} independent · ${item.report_count} reports`);
    row(dl, "Confidence", `${pct(item.confidence)} (score ${item.score})`);
    row(dl, "First report", when(item.first_report_at));
    row(dl, "Validated", `${when(item.validated_at)} (${age(item.validated_at)} ago)`);
    row(dl, "Last report", when(item.last_report_at));
    row(dl, "Last event", when(item.emitted_at));
    row(dl, "Acknowledged", item.acknowledged_by ? `${item.acknowledged_by} at ${when(item.acknowledged_at) || "?"}` : null);
    row(dl, "Assigned to", item.assigned_to);
    row(dl, "Resolved", item.resolved_reason ? `${item.resolved_reason}${item.superseded_by ? ` (into ${item.superseded_by})` : ""}` : null);
    if (item.surge_id) row(dl, "Surge", item.surge_id);
    if (item.surge) row(dl, "Surge rate", `${item.surge.rate_per_min}/min, ${item.surge.ratio}× baseline, ${(item.surge.regions || []).length} regions`);
    const facts = el("div", { class: "facts" }, dl);
    const aside = el("div", {});
    aside.append(el("h3", { text: "Sources" }));
    const sources = el("ul", { class: "sources" });
    for (const [source, count] of Object.entries(item.sources || {})) sources.append(el("li", { text: `${source}: ${count}` }));
    aside.append(sources);
    aside.append(el("h3", { text: `Member reports (${item.report_count})` }));
    const reports = el("ol", { class: "reports mono" });
    if (item.members && item.members.length) {
      // a timeline: in event-time order, each with its time and source (on the map too)
      const timeline = [...item.members].sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : 0));
      for (const m of timeline) reports.append(el("li", { text: `${when(m.at) || m.at}  ${m.id}  (${m.source ?? "no source"})` }));
    } else {
      for (const id of item.report_ids || []) reports.append(el("li", { text: id }));
    }
    aside.append(reports);
    if (item.report_ids_truncated) aside.append(el("p", { class: "small", text: "(the list is cut: more members than listed)" }));
    facts.append(aside);
    nodes.push(facts);
    if (item.surge_id && state.incidents.has(item.surge_id)) {
      nodes.push(el("p", {}, el("a", { href: `#${encodeURIComponent(item.surge_id)}`, onclick: (e) => { e.preventDefault(); select(item.surge_id); }, text: "Open its surge" })));
    }

    nodes.push(el("h3", { text: "History" }));
    const table = el("table", { class: "history" });
    table.append(el("tr", {}, ...["v", "event", "status", "at", "reporters", "conf.", "by / to / reason"].map((h) => el("th", { text: h }))));
    for (const h of [...state.history].reverse()) {
      const who = [h.acknowledged_by && `ack ${h.acknowledged_by}`, h.assigned_to && `→ ${h.assigned_to}`, h.resolved_reason].filter(Boolean).join(" · ");
      table.append(
        el("tr", {}, el("td", { text: h.version }), el("td", { text: h.event }), el("td", { text: h.status }), el("td", { class: "mono", text: when(h.emitted_at) || "" }), el("td", { text: h.independent_reporters }), el("td", { text: pct(h.confidence) }), el("td", { text: who })),
      );
    }
    nodes.push(table);

    const cap = el("a", { href: `/api/incidents/${encodeURIComponent(item.incident_id)}.cap`, text: "CAP alert (XML)" });
    if (state.config.read_protected) cap.addEventListener("click", (e) => { e.preventDefault(); download(item.incident_id); });
    nodes.push(el("p", { class: "small" }, cap));
    panel.replaceChildren(...nodes);
  }

  async function download(id) {
    const res = await fetch(`/api/incidents/${encodeURIComponent(id)}.cap`, { headers: authHeaders() });
    if (!res.ok) return setNotice(id, `CAP: HTTP ${res.status}`, "error");
    const url = URL.createObjectURL(await res.blob());
    const a = el("a", { href: url, download: `${id}.cap.xml` });
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 5000);
  }

  // ----------------------------------------------------------------------------- actions

  async function act(item, body, label) {
    let t = token() || (await askToken());
    if (!t) return;
    const by = sessionStorage.getItem(NAME_KEY);
    if (by && !body.by) body.by = by;
    const res = await fetch(`/api/incidents/${encodeURIComponent(item.incident_id)}/actions`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${t}` },
      body: JSON.stringify(body),
      cache: "no-store",
    });
    let data = {};
    try {
      data = await res.json();
    } catch (err) {
      data = {};
    }
    if (res.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      renderHeader();
      return setNotice(item.incident_id, `${label}: the token was refused (${data.detail || "401"}); sign in again.`, "error");
    }
    if (res.status !== 202) return setNotice(item.incident_id, `${label} refused: ${data.detail || `HTTP ${res.status}`}`, "error");
    if (body.action === "block") return setNotice(item.incident_id, `${label} sent: reports of ${body.reporter || body.device} count for nothing from now on (no incident event follows).`, "ok");
    const current = state.incidents.get(item.incident_id) || item;
    state.pending.set(item.incident_id, { action: body.action, version: current.version, label, sent: Date.now() });
    setNotice(item.incident_id, `${label} sent; waiting for the worker…`, "pending");
    setTimeout(() => {
      const pending = state.pending.get(item.incident_id);
      if (pending && pending.label === label && Date.now() - pending.sent >= 29000) {
        state.pending.delete(item.incident_id);
        setNotice(item.incident_id, `${label}: no answer from the worker yet (is it running?).`, "error");
      }
    }, 30000);
  }

  async function assign(item) {
    const v = await ask("Assign", `Which crew or department takes ${item.incident_id}?`, [
      { name: "to", label: "Crew or department", required: true, value: item.assigned_to || "" },
      { name: "note", label: "Note (optional)" },
    ]);
    if (v && v.to.trim()) act(item, { action: "assign", to: v.to.trim(), ...(v.note ? { note: v.note } : {}) }, "Assign");
  }

  async function resolve(item) {
    const v = await ask("Resolve", `Resolve ${item.category_text || item.category} ${item.incident_id}?`, [{ name: "note", label: "Note (optional)" }]);
    if (v) act(item, { action: "resolve", ...(v.note ? { note: v.note } : {}) }, "Resolve");
  }

  async function flag(item) {
    const v = await ask("Flag report", "Which member report should stop counting?", [
      { name: "report_id", label: "Report", options: item.report_ids || [], required: true },
      { name: "note", label: "Note (optional)" },
    ]);
    if (v && v.report_id) act(item, { action: "flag_report", report_id: v.report_id, ...(v.note ? { note: v.note } : {}) }, "Flag report");
  }

  async function block(item) {
    const v = await ask("Block reporter", "Reports of this reporter and/or device will count for nothing, everywhere, from now on. There is no unblock.", [
      { name: "reporter", label: "Reporter id" },
      { name: "device", label: "Device id (optional)" },
      { name: "note", label: "Note (optional)" },
    ]);
    if (!v) return;
    const body = { action: "block" };
    if (v.reporter.trim()) body.reporter = v.reporter.trim();
    if (v.device.trim()) body.device = v.device.trim();
    if (v.note) body.note = v.note;
    if (!body.reporter && !body.device) return setNotice(item.incident_id, "Block: a reporter or a device is needed.", "error");
    act(item, body, "Block reporter");
  }

  // ----------------------------------------------------------------------------- start

  async function start() {
    try {
      state.config = await (await fetch("/api/config", { cache: "no-store" })).json();
    } catch (err) {
      console.warn("config", err);
    }
    for (const id of ["f-status", "f-category", "f-jurisdiction", "f-sort"]) $(id).addEventListener("change", render);
    $("unseen").addEventListener("click", () => {
      state.unseen.clear();
      render();
    });
    $("token-btn").addEventListener("click", async () => {
      if (token()) {
        sessionStorage.removeItem(TOKEN_KEY);
        renderHeader();
      } else {
        await askToken();
      }
    });
    if (location.hash.length > 1) state.selected = decodeURIComponent(location.hash.slice(1));
    window.addEventListener("resize", scheduleRender);
    setInterval(scheduleRender, 30000); // ages
    renderHeader();
    stream();
  }

  start();
})();
