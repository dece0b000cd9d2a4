// Shared by every page: calls to our own APIs with errors in plain words, messages,
// confirmation, small SVG charts and formatting. No framework, no build step.
"use strict";
const lf = (() => {
  function describeError(status, body) {
    if (status === 401) return "Your session has ended. Sign in again to continue.";
    if (status === 403) return (body && (body.detail || body.message)) || "Your role does not allow this.";
    if (status === 404) return "It no longer exists; it may have been deleted. Reload the page.";
    if (status === 413) return "That file is too large.";
    if (status === 429) return "Too many requests; wait a moment and try again.";
    if (body && typeof body === "object") {
      if (typeof body.detail === "string") return body.detail;
      if (typeof body.message === "string") return body.message;
      const parts = [];
      for (const [field, messages] of Object.entries(body)) {
        const text = Array.isArray(messages) ? messages.map((m) => (typeof m === "string" ? m : JSON.stringify(m))).join(" ") : String(messages);
        parts.push(field === "non_field_errors" ? text : `${field.replaceAll("_", " ")}: ${text}`);
      }
      if (parts.length) return parts.join("; ");
    }
    if (status >= 500) return "The server ran into a problem; try again in a moment.";
    return `The request failed (HTTP ${status}).`;
  }

  async function api(method, url, body, options = {}) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body instanceof FormData) init.body = body;
    else if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
    if (options.headers) Object.assign(init.headers, options.headers);
    let response;
    try { response = await fetch(url, init); }
    catch (e) { throw new Error("The server cannot be reached. Check your connection and try again."); }
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (!response.ok) throw new Error(describeError(response.status, data));
    return data;
  }

  function toast(message, kind = "") {
    const box = document.getElementById("toasts");
    const item = document.createElement("div");
    item.className = `toast ${kind}`;
    if (kind === "bad") item.setAttribute("role", "alert");
    item.textContent = message;
    box.appendChild(item);
    setTimeout(() => item.remove(), kind === "bad" ? 9000 : 4000);
  }

  function confirmAction(title, text, okLabel = "Confirm") {
    const dialog = document.getElementById("confirm");
    dialog.querySelector("#confirm-title").textContent = title;
    dialog.querySelector("#confirm-text").textContent = text;
    dialog.querySelector("#confirm-ok").textContent = okLabel;
    dialog.returnValue = "";
    dialog.showModal();
    return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    seconds = Math.max(0, Math.round(seconds));
    const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    if (h) return `${h} h ${String(m).padStart(2, "0")} min`;
    if (m) return `${m} min`;
    return `${s} s`;
  }

  function temperature(pair) {
    if (!pair || pair[0] === null || pair[0] === undefined) return "–";
    const target = pair[1] ? ` / ${Math.round(pair[1])}` : "";
    return `${Math.round(pair[0])}${target} °C`;
  }

  function when(iso) {
    if (!iso) return "–";
    return new Date(iso).toLocaleString();
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  }

  // Round steps (1, 2 or 5 times a power of ten) from low to at least high, about `count`
  // of them: an axis reads 0, 50, 100…, never 0, 116, 231.
  function niceTicks(low, high, count = 5) {
    const span = Math.max(high - low, 1e-9);
    const magnitude = 10 ** Math.floor(Math.log10(span / count));
    const step = [1, 2, 2.5, 5, 10].map((f) => f * magnitude).find((s) => span / s <= count) || 10 * magnitude;
    const ticks = [];
    for (let i = 0; ; i++) {
      const value = Number((low + i * step).toPrecision(12));
      ticks.push(value);
      if (value >= high - step * 1e-9) break;
    }
    return ticks;
  }

  // series: [{label, color, points: [[x, y], ...]}]; x in seconds or any number.
  function lineChart(target, series, { yMin = 0, yMax = null, bands = [], xLabel = (x) => x, yLabel = (y) => y } = {}) {
    const W = 600, H = 180, L = 40, R = 8, T = 8, B = 22;
    target.replaceChildren();
    target.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const xs = series.flatMap((s) => s.points.map((p) => p[0]));
    const ys = series.flatMap((s) => s.points.map((p) => p[1])).filter((y) => y !== null);
    if (!xs.length) {
      const t = svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" });
      t.textContent = "No data yet";
      target.append(t);
      return;
    }
    const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
    const ticks = niceTicks(yMin, yMax !== null ? yMax : Math.max(...ys, yMin + 1));
    const top = yMax !== null ? yMax : ticks[ticks.length - 1];
    const px = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const py = (y) => T + (1 - (y - yMin) / (top - yMin)) * (H - T - B);
    for (const band of bands) {
      target.append(svg("rect", { x: L, width: W - L - R, y: py(band.to), height: Math.max(0, py(band.from) - py(band.to)), fill: band.color, opacity: 0.18 }));
    }
    target.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
    target.append(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
    for (const y of ticks) {
      const t = svg("text", { x: L - 4, y: py(y) + 4, "text-anchor": "end" });
      t.textContent = yLabel(y);
      target.append(t);
    }
    for (const [x, anchor] of [[x0, "start"], [x1, "end"]]) {
      const t = svg("text", { x: px(x), y: H - 6, "text-anchor": anchor });
      t.textContent = xLabel(x);
      target.append(t);
    }
    for (const s of series) {
      const pts = s.points.filter((p) => p[1] !== null).map((p) => `${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`);
      if (pts.length) target.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: s.color, "stroke-width": 2, "vector-effect": "non-scaling-stroke" }));
    }
  }

  // The fleet's live stream (server-sent events). EventSource reconnects by itself; the
  // indicator says when the page is not live, so nobody trusts a stale card.
  function live(url, onPrinters, indicator) {
    const source = new EventSource(url);
    const show = (text, ok) => {
      if (!indicator) return;
      indicator.textContent = text;
      indicator.className = `live ${ok ? "zone-green" : "zone-yellow"}`;
    };
    source.addEventListener("hello", () => show("● Live", true));
    source.addEventListener("printers", (event) => onPrinters(JSON.parse(event.data)));
    source.addEventListener("signed_out", () => { source.close(); show("Signed out: sign in again for live updates", false); });
    source.onerror = () => show(source.readyState === EventSource.CLOSED ? "Not live: reload the page" : "Reconnecting…", false);
    return source;
  }

  // The failure gauge's zones (detection.decisions.gauge_zone): in words, and as a chart's
  // bands over normalized_p, coloured as the gauge.
  const ZONE_WORDS = { green: "Looks good", yellow: "Fair", red: "Failing" };
  const ZONE_BANDS = [
    { from: 0, to: 1 / 3, color: "#2da44e" },
    { from: 1 / 3, to: 2 / 3, color: "#d4a72c" },
    { from: 2 / 3, to: 1, color: "#cf222e" },
  ];

  // The fleet states (fleet.models.FleetState) in which a printer is on a print.
  const ON_A_PRINT = ["Printing", "Heating", "Paused"];

  return { api, toast, confirm: confirmAction, el, duration, temperature, when, lineChart, niceTicks, live, ZONE_WORDS, ZONE_BANDS, ON_A_PRINT };
})();
