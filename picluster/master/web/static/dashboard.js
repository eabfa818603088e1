/*
 * The picluster dashboard: one page served by the master itself.
 *
 * It shows the cluster's summary (counts, troubles, the hottest) and one
 * page of slaves at a time: a cluster of 5,000 builds 50 rows, not 5,000.
 * It loads /api/master, /api/summary, a page of /api/slaves?history=1 and
 * /api/tasks, then follows the master's Server-Sent Events (/api/events,
 * event "cluster"), which carry the master, the summary and the latest
 * tasks every couple of seconds, the same size for any cluster; after each
 * it refreshes its page of slaves (one request at a time, never queued).
 * Each row's charts grow client-side from the samples those refreshes
 * carry; a new page, a new search, or a reconnect fetches the master's own
 * history of the rows shown.
 *
 * No framework and no library: the master may run where there is no
 * internet.  All text from the API (hostnames are chosen by the peers) goes
 * into the DOM through textContent or attributes, never through innerHTML.
 */
"use strict";

(() => {
  /** How many points each chart keeps. */
  const HISTORY_LIMIT = 120;
  /** A temperature at or above this (°C) is shown as hot. */
  const HOT = 70;
  /** Seconds without an event before the page says its data are stale. */
  const STALE_AFTER = 10;
  /** The longest wait (ms) before a closed event stream is opened again. */
  const MAX_RETRY = 15000;
  /** Slaves on a page: the rows built at any time. */
  const PAGE_SIZE = 50;
  /** Milliseconds of quiet typing before a search is asked for. */
  const SEARCH_DELAY = 250;
  const TASK_STATES = ["queued", "running", "done", "failed", "cancelled"];
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = {
    /** Server clock minus client clock, in seconds. */
    clockOffset: 0,
    master: null,
    /** uuid -> {summary, history, row, refs}, for the rows on the page */
    slaves: new Map(),
    /** What the page of slaves shows: the API's search, state and order. */
    view: { search: "", state: "", order: "hostname" },
    /** The cursor each page starts at (null: the first), up to this one. */
    pageStarts: [null],
    /** The next page's cursor, or null when this page is the last. */
    nextCursor: null,
    /** Bumped when the view changes: older answers are dropped. */
    pageGeneration: 0,
    pageLoading: false,
    pageStale: false,
    tasks: null,
    /** Client time (ms) of the last event, or 0. */
    lastEventAt: 0,
    haveHistory: false,
    needsHistory: false,
    needsResync: false,
    source: null,
    retryDelay: 1000,
    retryTimer: null,
    live: "connecting",
  };

  // ---------------------------------------------------------------- helpers

  const $ = (id) => document.getElementById(id);

  /** A new element with a class and text (always as text). */
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svgEl(tag, attributes) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      node.setAttribute(name, String(value));
    }
    return node;
  }

  /** Set text only when it changed, so selections and layout stay calm. */
  function setText(node, text) {
    const value = text === undefined || text === null ? "" : String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  const isNumber = (value) => typeof value === "number" && Number.isFinite(value);

  function noteServerTime(now) {
    if (isNumber(now)) state.clockOffset = now - Date.now() / 1000;
  }

  const serverNow = () => Date.now() / 1000 + state.clockOffset;

  // ------------------------------------------------------------- formatting

  /** "45 s", "12 min", "3 h 5 min", "2 d 4 h". */
  function formatDuration(seconds) {
    if (!isNumber(seconds)) return "–";
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s} s`;
    const minutes = Math.floor(s / 60);
    if (minutes < 60) return `${minutes} min`;
    const hours = Math.floor(minutes / 60);
    if (hours < 24) return minutes % 60 ? `${hours} h ${minutes % 60} min` : `${hours} h`;
    const days = Math.floor(hours / 24);
    return hours % 24 ? `${days} d ${hours % 24} h` : `${days} d`;
  }

  /** "3 s ago", or "just now" within the first second. */
  function formatAgo(timestamp) {
    if (!isNumber(timestamp)) return "–";
    const seconds = serverNow() - timestamp;
    if (seconds < 1) return "just now";
    return `${formatDuration(seconds)} ago`;
  }

  /** Binary sizes with one decimal where it helps: "912 MiB", "3.7 GiB". */
  function formatBytes(bytes) {
    if (!isNumber(bytes)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let value = Math.max(0, bytes);
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    const digits = value < 10 && unit > 0 ? 1 : 0;
    return `${value.toFixed(digits)} ${units[unit]}`;
  }

  /** A local clock time, with the date when it is not today. */
  function formatWhen(timestamp) {
    if (!isNumber(timestamp)) return "–";
    const date = new Date((timestamp - state.clockOffset) * 1000);
    const today = new Date();
    const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    if (date.toDateString() === today.toDateString()) return time;
    return `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
  }

  const formatPercent = (value) => (isNumber(value) ? `${Math.round(value)}%` : "–");
  const formatTemperature = (value) => (isNumber(value) ? `${value.toFixed(1)} °C` : "–");

  // ------------------------------------------------------------- sparklines

  /**
   * An empty sparkline: an inline SVG with an area and a line, redrawn by
   * drawSparkline.  It stretches to its box; the stroke keeps its width.
   */
  function makeSparkline(kind) {
    const svg = svgEl("svg", {
      class: `spark spark-${kind}`,
      viewBox: "0 0 120 28",
      preserveAspectRatio: "none",
      role: "img",
    });
    const title = svgEl("title");
    const area = svgEl("path", { class: "spark-area" });
    const line = svgEl("path", { class: "spark-line", "vector-effect": "non-scaling-stroke" });
    svg.append(title, area, line);
    return { svg, title, area, line };
  }

  /**
   * Draw values against their times.  A null value or a gap much longer
   * than the usual spacing breaks the line rather than bridging it.
   *
   * @param range {min, max} fixes the scale; missing ends follow the data,
   *     spread to at least minSpan so that small wiggles are not blown up,
   *     and kept within floor and ceiling.
   */
  function drawSparkline(spark, times, values, range, label, format) {
    const width = 120;
    const height = 28;
    const pad = 2;
    const points = [];
    for (let i = 0; i < times.length; i += 1) {
      if (isNumber(times[i])) points.push([times[i], isNumber(values[i]) ? values[i] : null]);
    }
    const known = points.filter(([, v]) => v !== null).map(([, v]) => v);
    if (points.length < 2 || known.length === 0) {
      spark.line.setAttribute("d", "");
      spark.area.setAttribute("d", "");
      setText(spark.title, `${label}: no history yet`);
      return;
    }
    let low = isNumber(range.min) ? range.min : Math.min(...known);
    let high = isNumber(range.max) ? range.max : Math.max(...known);
    const minSpan = range.minSpan || 0;
    if (high - low < minSpan) {
      const middle = (high + low) / 2;
      low = isNumber(range.min) ? low : middle - minSpan / 2;
      high = isNumber(range.max) ? high : low + minSpan;
    }
    if (isNumber(range.floor) && low < range.floor) {
      high += range.floor - low;
      low = range.floor;
    }
    if (isNumber(range.ceiling) && high > range.ceiling) {
      low = Math.max(isNumber(range.floor) ? range.floor : -Infinity, low - (high - range.ceiling));
      high = range.ceiling;
    }
    if (high <= low) high = low + 1;

    const t0 = points[0][0];
    const t1 = points[points.length - 1][0];
    const span = Math.max(t1 - t0, 1e-9);
    const steps = [];
    for (let i = 1; i < points.length; i += 1) steps.push(points[i][0] - points[i - 1][0]);
    steps.sort((a, b) => a - b);
    const usualStep = steps[Math.floor(steps.length / 2)] || 0;
    const maxGap = Math.max(usualStep * 4, 1);

    const x = (t) => ((t - t0) / span) * width;
    const y = (v) => {
      const clamped = Math.min(high, Math.max(low, v));
      return pad + (1 - (clamped - low) / (high - low)) * (height - 2 * pad);
    };

    const segments = [];
    let current = [];
    let previousTime = null;
    for (const [t, v] of points) {
      const gap = previousTime !== null && t - previousTime > maxGap;
      if (v === null || gap) {
        if (current.length) segments.push(current);
        current = [];
      }
      if (v !== null) current.push([x(t), y(v)]);
      previousTime = t;
    }
    if (current.length) segments.push(current);

    const f = (n) => n.toFixed(2);
    let line = "";
    let area = "";
    for (const segment of segments) {
      if (segment.length === 1) {
        // A lone point: a short dash so it can be seen.
        const [px, py] = segment[0];
        segment.push([Math.min(width, px + 1.5), py]);
        segment[0] = [Math.max(0, px - 1.5), py];
      }
      const path = segment.map(([px, py], i) => `${i ? "L" : "M"}${f(px)} ${f(py)}`).join("");
      line += path;
      const first = segment[0][0];
      const last = segment[segment.length - 1][0];
      area += `${path}L${f(last)} ${height}L${f(first)} ${height}Z`;
    }
    spark.line.setAttribute("d", line);
    spark.area.setAttribute("d", area);
    setText(
      spark.title,
      `${label} over ${formatDuration(t1 - t0)}: ` +
        `${format(Math.min(...known))} to ${format(Math.max(...known))}`
    );
  }

  // ----------------------------------------------------------------- slaves

  function emptyHistory() {
    return { t: [], cpu_percent: [], temperature: [], ram_free: [] };
  }

  /** A copy of the master's history, cut to the newest HISTORY_LIMIT points. */
  function historyFrom(history) {
    const copy = emptyHistory();
    if (!history || !Array.isArray(history.t)) return copy;
    const start = Math.max(0, history.t.length - HISTORY_LIMIT);
    for (const key of Object.keys(copy)) {
      const values = Array.isArray(history[key]) ? history[key] : [];
      copy[key] = values.slice(start, history.t.length);
    }
    return copy;
  }

  /** Add the summary's latest sample when it is newer than the last point. */
  function appendSample(history, summary) {
    const at = summary.vitals_at;
    if (!isNumber(at)) return;
    const times = history.t;
    // The history's times are float32 offsets, a few ms off: within 10 ms
    // of the last, a sample is the one already there.
    if (times.length && at <= times[times.length - 1] + 0.01) return;
    times.push(at);
    history.cpu_percent.push(summary.cpu_percent ?? null);
    history.temperature.push(summary.temperature ?? null);
    history.ram_free.push(summary.ram_free ?? null);
    const excess = times.length - HISTORY_LIMIT;
    if (excess > 0) {
      for (const key of Object.keys(history)) history[key].splice(0, excess);
    }
  }

  /** A usage bar: how much of the total is used, as a thin gauge. */
  function makeBar() {
    const bar = el("span", "bar");
    const fill = el("span", "bar-fill");
    bar.append(fill);
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    return { bar, fill };
  }

  function setBar(bar, free, total) {
    if (!isNumber(free) || !isNumber(total) || total <= 0) {
      bar.bar.hidden = true;
      return;
    }
    const used = Math.min(100, Math.max(0, (1 - free / total) * 100));
    bar.bar.hidden = false;
    bar.fill.style.width = `${used.toFixed(1)}%`;
    bar.bar.classList.toggle("bar-high", used >= 90);
    bar.bar.setAttribute("aria-valuenow", used.toFixed(0));
    bar.bar.title = `${used.toFixed(0)}% used`;
  }

  function cell(label, className) {
    const td = el("td", className);
    td.dataset.label = label;
    return td;
  }

  /** The row of one slave, with references to the nodes that change. */
  function makeSlaveRow(uuid) {
    const row = el("tr", "slave");
    row.dataset.uuid = uuid;
    const refs = {};

    const node = cell("Node", "node");
    const hostLine = el("div", "host-line");
    refs.hostname = el("span", "hostname");
    refs.stateBadge = el("span", "badge badge-left", "left");
    refs.clonedBadge = el("span", "badge badge-warn badge-cloned", "cloned");
    refs.clonedBadge.title = "Two machines hold this node's identity (a cloned SD card?)";
    hostLine.append(refs.hostname, refs.stateBadge, refs.clonedBadge);
    refs.model = el("div", "model");
    refs.address = el("div", "address");
    node.append(hostLine, refs.model, refs.address);

    const seen = cell("Seen", "seen");
    refs.seenMain = el("div", "seen-main");
    refs.seenSub = el("div", "sub");
    refs.seenSub2 = el("div", "sub");
    seen.append(refs.seenMain, refs.seenSub, refs.seenSub2);

    const cpu = cell("CPU", "metric cpu");
    refs.cpu = el("div", "value");
    refs.cpuSpark = makeSparkline("cpu");
    refs.load = el("div", "sub");
    cpu.append(refs.cpu, refs.cpuSpark.svg, refs.load);

    const temp = cell("Temperature", "metric temp");
    const tempLine = el("div", "value");
    refs.temp = el("span", "temp-value");
    refs.badges = el("span", "badges");
    tempLine.append(refs.temp, refs.badges);
    refs.tempSpark = makeSparkline("temp");
    temp.append(tempLine, refs.tempSpark.svg);

    const ram = cell("Free RAM", "metric ram");
    refs.ram = el("div", "value");
    refs.ramBar = makeBar();
    refs.ramSpark = makeSparkline("ram");
    refs.ramTotal = el("div", "sub");
    ram.append(refs.ram, refs.ramBar.bar, refs.ramSpark.svg, refs.ramTotal);

    const disk = cell("Free disk", "metric disk");
    refs.disk = el("div", "value");
    refs.diskBar = makeBar();
    refs.diskTotal = el("div", "sub");
    disk.append(refs.disk, refs.diskBar.bar, refs.diskTotal);

    const tasks = cell("Tasks", "metric tasks-cell");
    refs.tasks = el("div", "value");
    refs.tasksSub = el("div", "sub", "running / slots");
    tasks.append(refs.tasks, refs.tasksSub);

    row.append(node, seen, cpu, temp, ram, disk, tasks);
    return { row, refs };
  }

  function warningBadges(summary) {
    const badges = [];
    if (summary.under_voltage) badges.push(["under-voltage", "The supply voltage dropped too low"]);
    if (summary.throttled) badges.push(["throttled", "The CPU is being throttled"]);
    return badges;
  }

  /** Put one slave's summary and charts into its row. */
  function renderSlave(record) {
    const s = record.summary;
    const r = record.refs;
    const left = s.state === "left";
    const hot = !left && isNumber(s.temperature) && s.temperature >= HOT;
    const badges = warningBadges(s);

    record.row.className = `slave ${left ? "slave-left" : "slave-connected"}` +
      (hot ? " slave-hot" : "") + (badges.length ? " slave-warn" : "");

    setText(r.hostname, s.hostname || "(unnamed)");
    r.hostname.title = `uuid ${s.uuid}`;
    r.stateBadge.hidden = !left;
    r.clonedBadge.hidden = !s.cloned;
    setText(r.model, s.model || s.os || "unknown machine");
    const details = [s.address || "–"];
    if (!left && isNumber(s.rtt_ms)) details.push(`rtt ${s.rtt_ms.toFixed(1)} ms`);
    setText(r.address, details.join(" · "));

    setText(r.cpu, formatPercent(s.cpu_percent));
    setText(
      r.load,
      Array.isArray(s.load_average) && s.load_average.every(isNumber)
        ? `load ${s.load_average.map((v) => v.toFixed(2)).join(" ")}`
        : isNumber(s.cpu_cores) ? `${s.cpu_cores} cores` : ""
    );

    setText(r.temp, formatTemperature(s.temperature));
    r.temp.classList.toggle("hot", isNumber(s.temperature) && s.temperature >= HOT);
    const badgeKey = badges.map(([name]) => name).join(",");
    if (r.badges.dataset.key !== badgeKey) {
      r.badges.dataset.key = badgeKey;
      r.badges.replaceChildren(
        ...badges.map(([name, why]) => {
          const badge = el("span", "badge badge-warn", `⚠ ${name}`);
          badge.title = why;
          return badge;
        })
      );
    }

    setText(r.ram, formatBytes(s.ram_free));
    setBar(r.ramBar, s.ram_free, s.ram_total);
    setText(r.ramTotal, isNumber(s.ram_total) ? `of ${formatBytes(s.ram_total)}` : "");

    setText(r.disk, formatBytes(s.disk_free));
    setBar(r.diskBar, s.disk_free, s.disk_total);
    setText(r.diskTotal, isNumber(s.disk_total) ? `of ${formatBytes(s.disk_total)}` : "");

    const slots = isNumber(s.slots) ? s.slots : "–";
    // Runs handed over beyond the slots (prefetch), shown only when there
    // are some: "3 / 4 +4" under "running / slots + ready".
    const ready = isNumber(s.ready_tasks) && s.ready_tasks > 0 ? s.ready_tasks : 0;
    setText(r.tasks, `${isNumber(s.running_tasks) ? s.running_tasks : 0} / ${slots}${
      ready ? ` +${ready}` : ""}`);
    setText(r.tasksSub, ready ? "running / slots + ready" : "running / slots");
    const readyNote = ready ? `${ready} more held ready, to start as slots free` : "";
    if (r.tasks.title !== readyNote) r.tasks.title = readyNote;

    const h = record.history;
    drawSparkline(r.cpuSpark, h.t, h.cpu_percent, { min: 0, max: 100 }, "CPU", formatPercent);
    drawSparkline(r.tempSpark, h.t, h.temperature, { minSpan: 10 }, "Temperature",
      formatTemperature);
    // Free RAM moves little against the total: scale to the data, but to
    // no less than a tenth of the total, so that noise stays flat.
    const ramTotal = isNumber(s.ram_total) ? s.ram_total : undefined;
    drawSparkline(r.ramSpark, h.t, h.ram_free,
      { floor: 0, ceiling: ramTotal, minSpan: ramTotal ? ramTotal / 10 : 0 }, "Free RAM",
      formatBytes);

    renderSlaveTimes(record);
  }

  /** The parts of a row that move with the clock; redone every second. */
  function renderSlaveTimes(record) {
    const s = record.summary;
    const r = record.refs;
    if (s.state === "left") {
      setText(r.seenMain, `left ${formatAgo(s.left_at)}`);
      setText(r.seenSub, s.left_reason || "no reason given");
      r.seenSub.classList.add("reason");
      setText(r.seenSub2, `last seen ${formatWhen(s.last_seen)}`);
      return;
    }
    r.seenSub.classList.remove("reason");
    setText(r.seenMain, `seen ${formatAgo(s.last_seen)}`);
    let uptime = s.uptime;
    if (isNumber(uptime) && isNumber(s.vitals_at)) uptime += Math.max(0, serverNow() - s.vitals_at);
    setText(r.seenSub, `up ${formatDuration(uptime)}`);
    setText(r.seenSub2, `connected since ${formatWhen(s.connected_at)}`);
    r.seenMain.classList.toggle("late", isNumber(s.last_seen) && serverNow() - s.last_seen > 30);
  }

  /**
   * Bring the table in line with a full list of slaves, in the master's
   * order; a slave no longer listed (forgotten) loses its row.
   */
  function applySlaves(summaries, withHistory) {
    const seen = new Set();
    const body = $("slave-rows");
    for (const summary of summaries) {
      if (!summary || typeof summary.uuid !== "string") continue;
      seen.add(summary.uuid);
      let record = state.slaves.get(summary.uuid);
      if (!record) {
        const { row, refs } = makeSlaveRow(summary.uuid);
        record = { summary, history: emptyHistory(), row, refs };
        state.slaves.set(summary.uuid, record);
      }
      record.summary = summary;
      if (withHistory && summary.history) record.history = historyFrom(summary.history);
      appendSample(record.history, summary);
      renderSlave(record);
    }
    for (const [uuid, record] of state.slaves) {
      if (!seen.has(uuid)) {
        record.row.remove();
        state.slaves.delete(uuid);
      }
    }
    // Reorder only what moved, so that nothing flickers.
    let expected = body.firstElementChild;
    for (const summary of summaries) {
      const record = summary && state.slaves.get(summary.uuid);
      if (!record) continue;
      if (record.row !== expected) body.insertBefore(record.row, expected);
      else expected = expected.nextElementSibling;
    }
  }

  // ------------------------------------------------------- pages of slaves

  const filtered = () => Boolean(state.view.search || state.view.state);

  function pageURL(withHistory) {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE), order: state.view.order });
    if (state.view.search) query.set("search", state.view.search);
    if (state.view.state) query.set("state", state.view.state);
    const start = state.pageStarts[state.pageStarts.length - 1];
    if (start !== null) query.set("after", start);
    if (withHistory) query.set("history", "1");
    return `/api/slaves?${query}`;
  }

  /**
   * Fetch the page shown and bring its rows in line; with history when the
   * rows are new to the page (their charts start from the master's).  One
   * request at a time: a refresh asked for meanwhile runs once it is done.
   */
  async function loadPage(withHistory) {
    if (state.pageLoading && !withHistory) {
      state.pageStale = true;
      return;
    }
    const generation = state.pageGeneration;
    state.pageLoading = true;
    try {
      const data = await fetchJSON(pageURL(withHistory));
      if (generation !== state.pageGeneration) return;
      noteServerTime(data.now);
      const slaves = Array.isArray(data.slaves) ? data.slaves : [];
      if (!slaves.length && state.pageStarts.length > 1) {
        // The slaves of this page are gone: back to the first.
        state.pageStarts = [null];
        state.pageStale = true;
        state.needsHistory = true;
        return;
      }
      applySlaves(slaves, withHistory);
      state.nextCursor = data.more && typeof data.next === "string" ? data.next : null;
      renderPager(isNumber(data.total) ? data.total : slaves.length, slaves.length);
      state.haveHistory = state.haveHistory || withHistory;
    } finally {
      if (generation === state.pageGeneration) state.pageLoading = false;
      if (state.pageStale && !state.pageLoading) {
        state.pageStale = false;
        const history = Boolean(state.needsHistory);
        state.needsHistory = false;
        loadPage(history).catch(() => {});
      }
    }
  }

  function renderPager(total, shown) {
    const first = (state.pageStarts.length - 1) * PAGE_SIZE;
    setText($("page-range"), total === 0 ? "none" :
      `${(first + 1).toLocaleString()}–${(first + shown).toLocaleString()} of ${total.toLocaleString()}`);
    $("page-previous").disabled = state.pageStarts.length <= 1;
    $("page-next").disabled = state.nextCursor === null;
    const none = total === 0;
    $("slaves").hidden = none;
    $("slaves-empty").hidden = !(none && !filtered());
    $("slaves-none-match").hidden = !(none && filtered());
  }

  /** Show another page, or the first page of another view. */
  function turnTo(starts) {
    state.pageStarts = starts;
    state.pageGeneration += 1;
    state.pageLoading = false;
    state.pageStale = false;
    loadPage(true).catch(() => {
      state.needsResync = true;
    });
  }

  function setView(changes) {
    Object.assign(state.view, changes);
    $("slave-search").value = state.view.search;
    $("slave-state").value = state.view.state;
    $("slave-order").value = state.view.order;
    turnTo([null]);
  }

  function wireTools() {
    let typing = null;
    $("slave-tools").addEventListener("submit", (event) => event.preventDefault());
    $("slave-search").addEventListener("input", (event) => {
      clearTimeout(typing);
      const text = event.target.value.trim().slice(0, 200);
      typing = setTimeout(() => {
        if (text !== state.view.search) setView({ search: text });
      }, SEARCH_DELAY);
    });
    $("slave-state").addEventListener("change", (event) => setView({ state: event.target.value }));
    $("slave-order").addEventListener("change", (event) => setView({ order: event.target.value }));
    $("page-next").addEventListener("click", () => {
      if (state.nextCursor !== null) turnTo([...state.pageStarts, state.nextCursor]);
    });
    $("page-previous").addEventListener("click", () => {
      if (state.pageStarts.length > 1) turnTo(state.pageStarts.slice(0, -1));
    });
    const showTrouble = () => setView({ state: "trouble", search: "" });
    $("trouble-tile").addEventListener("click", showTrouble);
    $("trouble-tile").addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        showTrouble();
      }
    });
  }

  // ---------------------------------------------------------------- summary

  /** The counts in the masthead, and a line of troubles and the hottest. */
  function applySummary(summary) {
    if (!summary || typeof summary !== "object") return;
    const counts = summary.slaves || {};
    const troubled = isNumber(counts.in_trouble) ? counts.in_trouble : 0;
    setText($("trouble-count"), isNumber(counts.in_trouble) ? counts.in_trouble : "–");
    $("trouble-tile").classList.toggle("has-trouble", troubled > 0);
    $("trouble-tile").title = troubled ? "Show the slaves in trouble" : "No slave is in trouble";
    const notes = $("cluster-notes");
    const parts = [];
    const kinds = Object.entries(summary.troubles || {})
      .filter(([, n]) => isNumber(n) && n > 0)
      .map(([kind, n]) => `${n.toLocaleString()} ${kind}`);
    if (kinds.length) parts.push(el("span", "trouble", kinds.join(" · ")));
    if (isNumber(summary.slots) && summary.slots > 0) {
      const ready = isNumber(summary.ready_tasks) && summary.ready_tasks > 0
        ? `, ${summary.ready_tasks.toLocaleString()} ready` : "";
      parts.push(el("span", "", `${(summary.running_tasks || 0).toLocaleString()} of ${
        summary.slots.toLocaleString()} slots busy${ready}`));
    }
    const hottest = (Array.isArray(summary.hottest) ? summary.hottest : [])
      .filter((node) => node && isNumber(node.temperature)).slice(0, 3)
      .map((node) => `${node.hostname || String(node.uuid).slice(0, 8)} ${formatTemperature(node.temperature)}`);
    if (hottest.length) parts.push(el("span", "", `hottest: ${hottest.join(", ")}`));
    const key = parts.map((part) => part.textContent).join("|");
    if (notes.dataset.key !== key) {
      notes.dataset.key = key;
      const joined = [];
      parts.forEach((part, i) => {
        if (i) joined.push(document.createTextNode(" · "));
        joined.push(part);
      });
      notes.replaceChildren(...joined);
    }
  }

  // ----------------------------------------------------------------- master

  /** The TCP port in the master's slave endpoint ("tcp:5000:..." or 5000). */
  function listeningPort(port) {
    if (isNumber(port)) return String(port);
    const match = typeof port === "string" && /^(?:tcp6?|ssl):(?:port=)?(\d+)/i.exec(port);
    return match ? match[1] : null;
  }

  function applyMaster(master) {
    if (!master || typeof master !== "object") return;
    state.master = master;
    setText($("master-hostname"), master.hostname || "picluster master");
    setText($("master-version"), master.version || "–");
    const slaves = master.slaves || {};
    setText($("connected-count"), isNumber(slaves.connected) ? slaves.connected : "–");
    setText($("left-count"), isNumber(slaves.left) ? slaves.left : "–");
    const port = listeningPort(master.slave_port) || listeningPort(master.port);
    if (port) setText($("hint-port"), port);
    document.title = `${master.hostname || "picluster"} · ${
      isNumber(slaves.connected) ? slaves.connected : 0} up — picluster`;
    renderMasterTimes();
  }

  function renderMasterTimes() {
    const master = state.master;
    if (!master) return;
    let uptime = master.uptime;
    if (isNumber(master.started_at)) uptime = serverNow() - master.started_at;
    setText($("master-uptime"), formatDuration(uptime));
  }

  // ------------------------------------------------------------------ tasks

  function applyCounts(counts) {
    if (!counts || typeof counts !== "object") return;
    setText($("running-count"), isNumber(counts.running) ? counts.running : "–");
    setText($("queued-count"), isNumber(counts.queued) ? counts.queued : "–");
    const list = $("task-counts");
    const items = TASK_STATES.map((name) => {
      const n = isNumber(counts[name]) ? counts[name] : 0;
      const item = el("li", `count state-${name}${n ? "" : " zero"}`);
      item.append(el("span", "count-n", n), el("span", "count-label", name));
      return item;
    });
    list.replaceChildren(...items);
  }

  function applyTasks(tasks) {
    if (!tasks || typeof tasks !== "object") return;
    if (tasks.counts) applyCounts(tasks.counts);
    if (!Array.isArray(tasks.tasks)) return;
    state.tasks = tasks.tasks;
    const rows = tasks.tasks.map((task) => {
      const row = el("tr", "task");
      row.dataset.id = String(task.id);
      const id = cell("Id", "task-id");
      id.textContent = `#${task.id}`;
      const name = cell("Name", "task-name");
      name.textContent = task.name || "–";
      const stateCell = cell("State", "task-state");
      const known = TASK_STATES.includes(task.state) ? task.state : "unknown";
      stateCell.append(el("span", `pill state-${known}`, task.state || "?"));
      const attempts = cell("Attempts", "num task-attempts");
      attempts.textContent = isNumber(task.attempts) ? String(task.attempts) : "–";
      attempts.dataset.unit = task.attempts === 1 ? "attempt" : "attempts";
      const slave = cell("Slave", "task-slave");
      slave.textContent = task.slave_hostname || "–";
      const age = cell("Age", "num task-age");
      age.dataset.since = isNumber(task.submitted_at) ? String(task.submitted_at) : "";
      const note = cell("Note", "task-note");
      if (task.error) {
        note.append(el("span", "error", task.error));
      } else if (task.waiting) {
        note.append(el("span", "waiting", task.waiting));
      }
      row.append(id, name, stateCell, attempts, slave, age, note);
      return row;
    });
    $("task-rows").replaceChildren(...rows);
    $("tasks-empty").hidden = rows.length > 0;
    $("tasks").hidden = rows.length === 0;
    renderTaskTimes();
  }

  function renderTaskTimes() {
    for (const age of document.querySelectorAll("#task-rows .task-age")) {
      const since = parseFloat(age.dataset.since);
      setText(age, isNumber(since) ? formatDuration(serverNow() - since) : "–");
    }
  }

  // ------------------------------------------------------------ live status

  function setLive(live) {
    state.live = live;
    renderLive();
  }

  function renderLive() {
    const indicator = $("live");
    let live = state.live;
    let text = { live: "live", connecting: "connecting…", reconnecting: "reconnecting…" }[live];
    const quiet = state.lastEventAt ? (Date.now() - state.lastEventAt) / 1000 : 0;
    if (live === "live" && quiet > STALE_AFTER) {
      live = "stale";
      text = `no news for ${formatDuration(quiet)}`;
    }
    indicator.className = `live live-${live}`;
    setText($("live-text"), text);
    const updated = state.lastEventAt
      ? `updated ${quiet < 1 ? "just now" : `${formatDuration(quiet)} ago`}`
      : "waiting for the master…";
    const master = state.master;
    const parts = [updated];
    const port = master && (listeningPort(master.slave_port) || listeningPort(master.port));
    if (port) parts.push(`slaves connect on port ${port}`);
    setText($("updated"), parts.join(" · "));
  }

  /** Everything that shows elapsed time, once a second. */
  function tick() {
    for (const record of state.slaves.values()) renderSlaveTimes(record);
    renderMasterTimes();
    renderTaskTimes();
    renderLive();
  }

  // ------------------------------------------------------------------- data

  async function fetchJSON(url) {
    const response = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response.json();
  }

  async function loadAll() {
    const [master, , tasks, summary] = await Promise.allSettled([
      fetchJSON("/api/master"),
      loadPage(true),
      fetchJSON("/api/tasks?limit=10"),
      fetchJSON("/api/summary"),
    ]);
    if (summary.status === "fulfilled") applySummary(summary.value);
    if (master.status === "fulfilled") {
      noteServerTime(master.value.now);
      applyMaster(master.value);
    }
    // The task list carries the counts; without it, the master's will do.
    if (tasks.status === "fulfilled") applyTasks(tasks.value);
    else if (master.status === "fulfilled") applyCounts(master.value.tasks);
  }

  function applyCluster(data) {
    if (!data || typeof data !== "object") return;
    state.lastEventAt = Date.now();
    noteServerTime(data.now);
    applyMaster(data.master);
    applySummary(data.summary);
    applyTasks(data.tasks);
    renderLive();
    loadPage(false).catch(() => {
      state.needsResync = true;
    });
  }

  function resync() {
    turnTo(state.pageStarts);
  }

  /**
   * Follow /api/events.  The browser reopens a dropped stream by itself;
   * one that it gave up on (an HTTP error) is reopened here, backing off.
   */
  function connect() {
    state.retryTimer = null;
    const source = new EventSource("/api/events");
    state.source = source;
    source.addEventListener("open", () => {
      state.retryDelay = 1000;
      setLive("live");
      if (state.needsResync || !state.haveHistory) {
        state.needsResync = false;
        resync();
      }
    });
    source.addEventListener("cluster", (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      applyCluster(data);
    });
    source.addEventListener("error", () => {
      state.needsResync = true;
      setLive("reconnecting");
      if (source.readyState === EventSource.CLOSED && state.retryTimer === null) {
        source.close();
        state.retryTimer = setTimeout(connect, state.retryDelay);
        state.retryDelay = Math.min(MAX_RETRY, state.retryDelay * 2);
      }
    });
  }

  async function start() {
    wireTools();
    await loadAll();
    connect();
    setInterval(tick, 1000);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
