// A printer's page: live head, camera with detection boxes and ignore areas, actions,
// detection and temperature graphs, settings.
"use strict";
(() => {
  const data = JSON.parse(document.getElementById("printer-data").textContent);
  let card = data.card, history = data.history, masks = data.settings.ignore_masks.map((m) => m.slice());
  const id = card.id;
  const $ = (selector) => document.querySelector(selector);
  const pic = $("#pic"), overlay = $("#overlay"), drawButton = $("#draw-mask");
  // Temperatures seen live on this page, added to those kept with scored frames.
  const liveTemps = [];

  function showCard() {
    $("#p-name").textContent = card.name;
    $("#crumb-name").textContent = card.name;
    const badge = $("#p-state");
    badge.textContent = card.state;
    badge.className = `badge ${card.state}`;
    $("#p-state-text").textContent = card.state_text || card.state;
    $("#p-file").textContent = card.file || "–";
    $("#p-progress").textContent = card.completion !== null
      ? `${Math.floor(card.completion)} %${card.seconds_left !== null ? `, ${lf.duration(card.seconds_left)} left` : ""}` : "–";
    $("#p-nozzle").textContent = lf.temperature(card.nozzle);
    $("#p-bed").textContent = lf.temperature(card.bed);
    $("#p-gauge").innerHTML = "";
    $("#p-gauge").append(lf.el("span", { class: `zone-${card.zone}`, style: "font-weight:600", text: `${lf.ZONE_WORDS[card.zone]} (${card.normalized_p.toFixed(2)})` }));
    const alert = $("#p-alert");
    alert.textContent = card.paused_by_detector ? "The failure detector paused this print. Look at the picture, then resume or cancel."
      : card.alerting ? "The failure detector raised an alert on this print." : "";
    alert.classList.toggle("hidden", !alert.textContent);
    const pausedBy = $("#p-paused-by");
    pausedBy.textContent = card.paused_by && !card.paused_by_detector ? `${card.paused_by_text}. Resume it when you are ready.` : "";
    pausedBy.classList.toggle("hidden", !pausedBy.textContent);
    const watch = $("#p-watch");
    watch.textContent = card.not_watching_reason ? `Not watched: ${card.not_watching_reason}` : card.watch_note || "";
    watch.className = card.not_watching_reason ? "notwatched" : "small muted";
    watch.classList.toggle("hidden", !watch.textContent);
    const printing = card.state === "Printing" || card.state === "Heating", paused = card.state === "Paused";
    $("#act-pause").classList.toggle("hidden", !printing);
    $("#act-resume").classList.toggle("hidden", !paused);
    $("#act-cancel").classList.toggle("hidden", !(printing || paused));
    $("#act-mute").classList.toggle("hidden", !card.print_id);
    $("#act-mute").textContent = card.muted ? "Unmute alerts" : "Mute alerts for this print";
    $("#act-ack").classList.toggle("hidden", !card.alerting);
    const link = $("#p-print-link");
    link.replaceChildren();
    if (card.print_id) link.append(lf.el("a", { href: `/prints/${card.print_id}/`, text: "This print's page" }));
    if (card.picture && pic.getAttribute("src") !== card.picture) pic.src = card.picture;
    $("#pic-at").textContent = card.picture_at ? `Picture taken ${lf.when(card.picture_at)}` : "No picture yet: the agent sends one when its camera works.";
    if (card.nozzle || card.bed) {
      liveTemps.push({ t: Date.now() / 1000, nozzle: card.nozzle, bed: card.bed });
      if (liveTemps.length > 2000) liveTemps.shift();
    }
  }

  // ---- camera overlays: detection boxes and ignore areas ----
  // Ignore areas are edited for one camera at a time: `maskCamera` null is the main camera
  // (the printer's own ignore_masks), otherwise another camera's name.
  let drawing = false, dragStart = null, dragNow = null, maskCamera = null;
  const maskCameraSelect = $("#mask-camera");

  function masksOf(camera) {
    if (camera === null) return masks;
    const other = (history.cameras || []).find((c) => c.name === camera);
    return other ? other.ignore_masks : [];
  }

  function drawDrag(ctx, w, h, camera) {
    if (!(dragStart && dragNow && camera === maskCamera)) return;
    ctx.setLineDash([6, 4]); ctx.strokeStyle = "#fff";
    ctx.strokeRect(dragStart.x * w, dragStart.y * h, (dragNow.x - dragStart.x) * w, (dragNow.y - dragStart.y) * h);
    ctx.setLineDash([]);
  }

  function drawOverlay() {
    const w = overlay.clientWidth, h = overlay.clientHeight;
    if (overlay.width !== w || overlay.height !== h) { overlay.width = w; overlay.height = h; }
    const ctx = overlay.getContext("2d");
    ctx.clearRect(0, 0, w, h);
    ctx.lineWidth = 2;
    ctx.font = "12px system-ui, sans-serif";
    for (const [x0, y0, x1, y1] of masks) {
      ctx.fillStyle = "rgba(74,163,255,.25)"; ctx.strokeStyle = "#4aa3ff";
      ctx.fillRect(x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h);
      ctx.strokeRect(x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h);
    }
    const boxes = history.boxes;
    if (boxes && pic.naturalWidth) {
      const sx = w / pic.naturalWidth, sy = h / pic.naturalHeight;
      ctx.strokeStyle = "#ff3b30"; ctx.fillStyle = "#ff3b30";
      for (const [xc, yc, bw, bh, confidence] of boxes.boxes) {
        ctx.strokeRect((xc - bw / 2) * sx, (yc - bh / 2) * sy, bw * sx, bh * sy);
        ctx.fillText(`${Math.round(confidence * 100)} %`, (xc - bw / 2) * sx + 3, (yc - bh / 2) * sy + 13);
      }
    }
    drawDrag(ctx, w, h, null);
  }

  function listMasks() {
    const list = $("#mask-list"), current = masksOf(maskCamera);
    list.replaceChildren();
    current.forEach((mask, index) => {
      const pct = mask.map((v) => `${Math.round(v * 100)} %`);
      const remove = lf.el("button", { type: "button", class: "small secondary", text: "Remove", "aria-label": `Remove ignore area ${index + 1}` });
      remove.addEventListener("click", () => saveMasks(current.filter((_, i) => i !== index), "Ignore area removed."));
      list.append(lf.el("li", { style: "margin:.25rem 0" }, `Area ${index + 1}: from ${pct[0]}, ${pct[1]} to ${pct[2]}, ${pct[3]} `, remove));
    });
    if (!current.length) list.append(lf.el("li", { class: "muted", text: "No ignore areas." }));
  }

  function redrawAll() {
    listMasks();
    drawOverlay();
    showCameras();
  }

  async function saveMasks(next, message) {
    try {
      const saved = await lf.api("PATCH", `/api/v1/printers/${id}/cameras/`, { camera: maskCamera, ignore_masks: next });
      for (const camera of saved) {
        if (camera.primary) { masks = camera.ignore_masks; continue; }
        const shown = (history.cameras || []).find((c) => c.name === camera.name);
        if (shown) shown.ignore_masks = camera.ignore_masks;
      }
      lf.toast(message);
    } catch (error) {
      lf.toast(`The ignore areas were not saved: ${error.message}`, "bad");
    }
    redrawAll();
  }

  // The canvas ignore areas are drawn on: the main picture's, or the selected camera's tile.
  function maskCanvas() {
    if (maskCamera === null) return overlay;
    return [...document.querySelectorAll("#camera-tiles canvas")].find((c) => c.dataset.camera === maskCamera) || null;
  }

  function point(canvas, event) {
    const rect = canvas.getBoundingClientRect();
    return { x: Math.min(1, Math.max(0, (event.clientX - rect.left) / rect.width)), y: Math.min(1, Math.max(0, (event.clientY - rect.top) / rect.height)) };
  }

  function setDrawing(on) {
    drawing = on;
    drawButton.setAttribute("aria-pressed", String(on));
    drawButton.textContent = on ? "Drag over the picture… (Esc to stop)" : "Draw an ignore area";
    for (const canvas of [overlay, ...document.querySelectorAll("#camera-tiles canvas")]) {
      canvas.classList.toggle("drawing", on && canvas === maskCanvas());
    }
  }

  // Drag handlers for one camera's canvas; `camera` null is the main picture.
  function editable(canvas, camera, redraw) {
    canvas.addEventListener("pointerdown", (event) => {
      if (!drawing || camera !== maskCamera) return;
      canvas.setPointerCapture(event.pointerId);
      dragStart = dragNow = point(canvas, event);
    });
    canvas.addEventListener("pointermove", (event) => { if (dragStart && camera === maskCamera) { dragNow = point(canvas, event); redraw(); } });
    canvas.addEventListener("pointerup", (event) => {
      if (!dragStart || camera !== maskCamera) return;
      const end = point(canvas, event), start = dragStart;
      dragStart = dragNow = null;
      setDrawing(false);
      if (Math.abs(end.x - start.x) < 0.01 || Math.abs(end.y - start.y) < 0.01) {
        lf.toast("That area is too small; drag across the part of the picture to ignore.", "bad");
        redraw();
        return;
      }
      saveMasks([...masksOf(camera), [start.x, start.y, end.x, end.y]], "Ignore area saved: the detector disregards it from the next picture on.");
    });
  }

  drawButton.addEventListener("click", () => {
    if (!drawing && maskCamera !== null) {
      const canvas = maskCanvas();
      if (canvas) canvas.scrollIntoView({ block: "nearest" });
    }
    setDrawing(!drawing);
  });
  maskCameraSelect.addEventListener("change", () => {
    maskCamera = maskCameraSelect.value === "" ? null : maskCameraSelect.value;
    dragStart = dragNow = null;
    setDrawing(false);
    listMasks();
  });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape" && drawing) { dragStart = dragNow = null; setDrawing(false); drawOverlay(); showCameras(); } });
  editable(overlay, null, drawOverlay);
  pic.addEventListener("load", drawOverlay);
  new ResizeObserver(drawOverlay).observe(overlay);

  // ---- graphs ----
  const time = (x) => new Date(x * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  function drawCharts() {
    const frames = history.frames;
    lf.lineChart($("#chart-p"), [{ color: "#14202e", points: frames.map((f) => [Date.parse(f.t) / 1000, f.normalized_p]) }], {
      yMin: 0, yMax: 1, xLabel: time, yLabel: (y) => y.toFixed(1),
      bands: lf.ZONE_BANDS,
    });
    const since = history.print_started_at ? Date.parse(history.print_started_at) / 1000 : 0;
    const temps = [...frames.map((f) => ({ t: Date.parse(f.t) / 1000, nozzle: f.nozzle, bed: f.bed })),
      ...liveTemps.filter((p) => p.t >= since)].sort((a, b) => a.t - b.t);
    lf.lineChart($("#chart-t"), [
      { color: "#cf222e", points: temps.filter((p) => p.nozzle).map((p) => [p.t, p.nozzle[0]]) },
      { color: "#0b5cad", points: temps.filter((p) => p.bed).map((p) => [p.t, p.bed[0]]) },
    ], { yMin: 0, xLabel: time, yLabel: (y) => `${Math.round(y)}°` });
  }

  // ---- the other cameras: each one's latest picture, its boxes and its ignore areas ----
  function showCameras() {
    if (dragStart) return;  // rebuilt after the drag, not under the pointer
    const cameras = history.cameras || [];
    $("#cameras-card").classList.toggle("hidden", !cameras.length);
    showMaskCameras(cameras.filter((c) => !c.nozzle).map((c) => c.name));
    const tiles = $("#camera-tiles");
    tiles.replaceChildren();
    for (const camera of cameras) {
      const img = lf.el("img", { alt: `Latest picture from the camera ${camera.name}` });
      const canvas = lf.el("canvas", { "aria-label": `Detection boxes and ignore areas over the camera ${camera.name}`, "data-camera": camera.name });
      const draw = () => drawCameraOverlay(canvas, img, camera);
      img.addEventListener("load", draw);
      if (!camera.nozzle) editable(canvas, camera.name, draw);
      canvas.classList.toggle("drawing", drawing && camera.name === maskCamera);
      if (camera.picture) img.src = camera.picture;
      const words = camera.nozzle ? "nozzle camera, shown but not watched" : "watched";
      const when = camera.picture_at ? `picture taken ${lf.when(camera.picture_at)}` : "no picture yet";
      tiles.append(lf.el("figure", {},
        lf.el("div", { class: "picture-frame" }, img, canvas),
        lf.el("figcaption", { class: "small" }, lf.el("strong", { text: camera.name }), ` (${words}), ${when}`)));
    }
  }

  // The camera picker of the ignore areas: the main camera and every watched other camera.
  function showMaskCameras(names) {
    const wanted = ["", ...names];
    const have = [...maskCameraSelect.options].map((o) => o.value);
    if (wanted.join("\n") !== have.join("\n")) {
      maskCameraSelect.replaceChildren(...wanted.map((name) => lf.el("option", { value: name, text: name || "Main camera" })));
      if (maskCamera !== null && !names.includes(maskCamera)) { maskCamera = null; setDrawing(false); listMasks(); }
      maskCameraSelect.value = maskCamera === null ? "" : maskCamera;
    }
    $("#mask-camera-label").classList.toggle("hidden", !names.length);
  }

  function drawCameraOverlay(canvas, img, camera) {
    const w = canvas.clientWidth, h = canvas.clientHeight;
    canvas.width = w; canvas.height = h;
    const ctx = canvas.getContext("2d");
    ctx.lineWidth = 2;
    ctx.font = "12px system-ui, sans-serif";
    for (const [x0, y0, x1, y1] of camera.ignore_masks) {
      ctx.fillStyle = "rgba(74,163,255,.25)"; ctx.strokeStyle = "#4aa3ff";
      ctx.fillRect(x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h);
      ctx.strokeRect(x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h);
    }
    if (camera.boxes && img.naturalWidth) {
      const sx = w / img.naturalWidth, sy = h / img.naturalHeight;
      ctx.strokeStyle = "#ff3b30"; ctx.fillStyle = "#ff3b30";
      for (const [xc, yc, bw, bh, confidence] of camera.boxes.boxes) {
        ctx.strokeRect((xc - bw / 2) * sx, (yc - bh / 2) * sy, bw * sx, bh * sy);
        ctx.fillText(`${Math.round(confidence * 100)} %`, (xc - bw / 2) * sx + 3, (yc - bh / 2) * sy + 13);
      }
    }
    drawDrag(ctx, w, h, camera.name);
  }

  let historyTimer = null;
  function refreshHistorySoon() {
    if (historyTimer) return;
    historyTimer = setTimeout(async () => {
      historyTimer = null;
      try { history = await lf.api("GET", `/printers/${id}/history.json`); } catch (error) { return; }
      drawCharts();
      drawOverlay();
      showCameras();
    }, 1000);
  }

  // ---- actions ----
  async function act(path, body, { confirmTitle, confirmText, okLabel, done, refused }) {
    if (confirmTitle && !(await lf.confirm(confirmTitle, confirmText, okLabel))) return;
    try {
      const result = await lf.api("POST", `/api/v1/printers/${id}/${path}/`, body);
      if (result.succeeded) lf.toast(done); else lf.toast(refused, "bad");
    } catch (error) {
      lf.toast(error.message, "bad");
    }
  }
  $("#act-pause").addEventListener("click", () => act("pause_print", undefined, {
    confirmTitle: `Pause ${card.name}?`, confirmText: "The print pauses; the nozzle retracts, lifts and the heaters follow the pause settings below.", okLabel: "Pause print",
    done: "Pause sent to the printer.", refused: "The printer did not pause: its agent is not connected or it is no longer printing." }));
  $("#act-resume").addEventListener("click", () => act("resume_print", undefined, {
    done: "Resume sent to the printer.", refused: "The printer did not resume: its agent is not connected or it is not paused." }));
  $("#act-cancel").addEventListener("click", () => act("cancel_print", undefined, {
    confirmTitle: `Cancel the print on ${card.name}?`, confirmText: "The print stops for good and cannot be resumed.", okLabel: "Cancel print",
    done: "Cancel sent to the printer.", refused: "The print was not cancelled: the agent is not connected or nothing is printing." }));
  $("#act-mute").addEventListener("click", () => act("mute_current_print", { mute_alert: !card.muted }, {
    done: card.muted ? "Alerts unmuted." : "Alerts muted for the rest of this print.", refused: "There is no current print to mute." }));
  $("#act-ack").addEventListener("click", () => act("acknowledge_alert", undefined, {
    done: "Alert acknowledged.", refused: "There is no alert to acknowledge." }));

  // ---- agent token (admins) ----
  const rotate = $("#rotate-token");
  if (rotate) rotate.addEventListener("click", async () => {
    const ok = await lf.confirm(`Rotate the agent token of ${card.name}?`,
      "The agent is disconnected at once and cannot reconnect with its old token: it stops sending pictures and the printer is not watched until you enter the new token in the agent.",
      "Rotate token");
    if (!ok) return;
    rotate.disabled = true;
    try {
      const result = await lf.api("POST", `/api/v1/printers/${id}/rotate_token/`);
      const token = result && result.printer && result.printer.auth_token;
      if (!result.succeeded || !token) { lf.toast("The token was not rotated.", "bad"); return; }
      $("#new-token-value").textContent = token;
      $("#new-token").classList.remove("hidden");
      $("#copy-token").focus();
      lf.toast("New agent token made; the old one no longer works.");
    } catch (error) {
      lf.toast(`The token was not rotated: ${error.message}`, "bad");
    } finally {
      rotate.disabled = false;
    }
  });
  const copyToken = $("#copy-token");
  if (copyToken) copyToken.addEventListener("click", async () => {
    const text = $("#new-token-value").textContent;
    try {
      await navigator.clipboard.writeText(text);
      lf.toast("Token copied.");
    } catch (error) {
      // Plain HTTP on a LAN has no clipboard API: select it for the person to copy.
      const range = document.createRange();
      range.selectNodeContents($("#new-token-value"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      lf.toast("Copying is not allowed here: the token is selected, copy it with Ctrl+C.", "bad");
    }
  });

  // ---- settings ----
  const form = $("#settings-form");
  const sensitivity = $("#s-sensitivity");
  sensitivity.addEventListener("input", () => { $("#s-sensitivity-out").textContent = Number(sensitivity.value).toFixed(2); });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const errorBox = $("#settings-error");
    errorBox.classList.add("hidden");
    const f = form.elements;
    const numbers = { retract_on_pause: "Retract filament", lift_z_on_pause: "Lift the nozzle" };
    for (const [name, label] of Object.entries(numbers)) {
      const value = f[name].value;
      if (value === "" || !(Number(value) >= 0 && Number(value) <= 100)) {
        errorBox.textContent = `${label}: give a distance from 0 to 100 mm.`;
        errorBox.classList.remove("hidden");
        f[name].focus();
        return;
      }
    }
    if (!f.name.value.trim()) {
      errorBox.textContent = "Name: give the printer a name.";
      errorBox.classList.remove("hidden");
      f.name.focus();
      return;
    }
    const body = {
      name: f.name.value.trim(), detective_sensitivity: Number(sensitivity.value),
      watching_enabled: f.watching_enabled.checked, action_on_failure: form.querySelector("input[name=action_on_failure]:checked").value,
      retract_on_pause: Number(f.retract_on_pause.value), lift_z_on_pause: Number(f.lift_z_on_pause.value),
      tools_off_on_pause: f.tools_off_on_pause.checked, bed_off_on_pause: f.bed_off_on_pause.checked,
    };
    try {
      await lf.api("PATCH", `/api/v1/printers/${id}/`, body);
      lf.toast("Settings saved.");
    } catch (error) {
      errorBox.textContent = `Not saved: ${error.message}`;
      errorBox.classList.remove("hidden");
    }
  });

  showCard();
  listMasks();
  drawCharts();
  drawOverlay();
  showCameras();
  let lastPicture = card.picture;
  lf.live(`/events/fleet?printer=${id}`, ({ cards, removed }) => {
    if (removed.includes(id)) { lf.toast("This printer was deleted.", "bad"); return; }
    const fresh = cards.find((c) => c.id === id);
    if (!fresh) return;
    const newPrint = fresh.print_id !== card.print_id;
    card = fresh;
    showCard();
    if (newPrint || card.picture !== lastPicture) { lastPicture = card.picture; refreshHistorySoon(); }
    drawCharts();
  }, $("#live"));
})();
