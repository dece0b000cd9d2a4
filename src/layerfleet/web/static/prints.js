// The Prints pages: local times, the print's graphs, and the user's answers (verdict and
// feedback frames), sent through the v1 print API, whose role checks and messages we show.
"use strict";
(() => {
  const localTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  for (const node of document.querySelectorAll("time[data-local]")) {
    const at = new Date(node.getAttribute("datetime"));
    if (!Number.isNaN(at.getTime())) node.textContent = localTime.format(at);
  }

  // Upload a timelapse (the history page): XMLHttpRequest, for its upload progress events.
  const uploadForm = document.getElementById("upload-form");
  if (uploadForm) {
    const progress = document.getElementById("upload-progress");
    const status = document.getElementById("upload-status");
    uploadForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const file = document.getElementById("upload-file").files[0];
      if (!file) return;
      const body = new FormData();
      body.append("file", file);
      body.append("filename", file.name);
      const printer = document.getElementById("upload-printer").value;
      if (printer) body.append("printer_id", printer);
      const hours = Number(document.getElementById("upload-hours").value);
      if (hours > 0) body.append("print_seconds", String(Math.round(hours * 3600)));
      const button = uploadForm.querySelector("button[type=submit]");
      button.disabled = true;
      progress.hidden = false;
      progress.value = 0;
      status.textContent = "Uploading…";
      const request = new XMLHttpRequest();
      request.open("POST", "/api/v1/prints/upload/");
      request.upload.addEventListener("progress", (e) => {
        if (!e.lengthComputable) return;
        progress.value = Math.round((e.loaded / e.total) * 100);
        status.textContent = `Uploading… ${progress.value} %`;
      });
      request.addEventListener("load", () => {
        button.disabled = false;
        let answer = null;
        try { answer = JSON.parse(request.responseText); } catch (_) { /* not JSON */ }
        if (request.status === 201 && answer) {
          status.textContent = "Uploaded. The detector is checking it; opening the print…";
          window.location.assign(`/prints/${answer.id}/`);
        } else {
          progress.hidden = true;
          status.textContent = (answer && (answer.detail || Object.values(answer).flat().join(" "))) ||
            `The upload failed (HTTP ${request.status}).`;
        }
      });
      request.addEventListener("error", () => {
        button.disabled = false;
        progress.hidden = true;
        status.textContent = "The upload failed: the server could not be reached.";
      });
      request.send(body);
    });
  }

  // The print's timelapse: a switch between the plain and the tagged video, keeping the
  // moment; "Show in video" buttons seek to theirs.
  const player = document.getElementById("timelapse");
  if (player) {
    const sources = [...document.querySelectorAll("button[data-video-source]")];
    for (const button of sources) {
      button.addEventListener("click", () => {
        if (button.getAttribute("aria-pressed") === "true") return;
        const at = player.currentTime;
        const playing = !player.paused;
        player.addEventListener("loadedmetadata", () => {
          player.currentTime = at;
          if (playing) player.play();
        }, { once: true });
        player.src = button.dataset.videoSource;
        for (const b of sources) b.setAttribute("aria-pressed", String(b === button));
      });
    }
    for (const button of document.querySelectorAll("button[data-seek]")) {
      button.addEventListener("click", () => {
        player.pause();
        player.currentTime = Number(button.dataset.seek);
        player.scrollIntoView({ block: "nearest", behavior: "smooth" });
        player.focus();
      });
    }
  }

  const dataNode = document.getElementById("print-data");
  if (!dataNode) return; // the history page
  const data = JSON.parse(dataNode.textContent);
  const printUrl = `/api/v1/prints/${data.id}/`;

  const likelihood = document.getElementById("likelihood-chart");
  if (likelihood) {
    lf.lineChart(likelihood, [{ label: "Failure likelihood", color: "#1b1f24", points: data.chart.likelihood }], {
      yMin: 0, yMax: 1, bands: lf.ZONE_BANDS, xLabel: lf.duration, yLabel: (y) => `${Math.round(y * 100)} %`,
    });
  }

  // The printer page's colours and words for the usual heaters (OctoPrint's and Klipper's names).
  const HEATERS = { tool0: ["Nozzle", "#cf222e"], extruder: ["Nozzle", "#cf222e"], bed: ["Bed", "#0b5cad"], heater_bed: ["Bed", "#0b5cad"] };
  const OTHER_COLORS = ["#8250df", "#1a7f37", "#9a6700"];
  const temperatures = document.getElementById("temperature-chart");
  if (temperatures) {
    const series = Object.entries(data.chart.temperatures).map(([heater, points], i) => {
      const [label, color] = HEATERS[heater] || [heater, OTHER_COLORS[i % OTHER_COLORS.length]];
      return { label, color, points };
    });
    lf.lineChart(temperatures, series, { yMin: 0, xLabel: lf.duration, yLabel: (y) => `${Math.round(y)} °C` });
    const legend = document.getElementById("temperature-legend");
    legend.replaceChildren(...series.map((s) => {
      const last = s.points.filter((p) => p[1] !== null).at(-1);
      const text = last ? `${s.label} (last ${Math.round(last[1])} °C)` : s.label;
      return lf.el("span", { style: `--c:${s.color}`, text });
    }));
  }

  // Sends one change; the buttons wait meanwhile so that a double click sends it once.
  async function patch(buttons, body) {
    for (const b of buttons) b.disabled = true;
    try {
      return await lf.api("PATCH", printUrl, body);
    } catch (error) {
      lf.toast(error.message, "bad");
      return null;
    } finally {
      for (const b of buttons) b.disabled = false;
    }
  }

  function press(buttons, chosen, attribute) {
    for (const b of buttons) b.setAttribute("aria-pressed", String(b.getAttribute(attribute) === chosen));
  }

  const VERDICT_TEXT = { FAILED: "Failed", NOT_FAILED: "Not failed" };
  const verdictButtons = [...document.querySelectorAll("button[data-verdict]")];
  for (const button of verdictButtons) {
    button.addEventListener("click", async () => {
      if (button.getAttribute("aria-pressed") === "true") return;
      const saved = await patch(verdictButtons, { alert_overwrite: button.dataset.verdict });
      if (!saved) return;
      press(verdictButtons, saved.alert_overwrite, "data-verdict");
      document.getElementById("verdict-text").textContent = VERDICT_TEXT[saved.alert_overwrite] || "Not given yet";
      lf.toast("Verdict saved.");
    });
  }

  const ANSWER_TEXT = { LOOKS_BAD: "Looks bad", LOOKS_OK: "Looks OK" };
  function showFeedback(feedbacks) {
    for (const feedback of feedbacks) {
      const frame = document.querySelector(`.frame[data-feedback="${feedback.id}"]`);
      if (!frame) continue;
      press(frame.querySelectorAll("button[data-answer]"), feedback.answer, "data-answer");
      frame.querySelector(".answer-text").textContent = ANSWER_TEXT[feedback.answer] || "Not answered yet";
    }
    const pending = feedbacks.filter((f) => f.answered_at === null).length;
    const counter = document.getElementById("feedback-pending");
    if (counter) counter.textContent = `${pending} of ${feedbacks.length} still to answer.`;
  }

  for (const frame of document.querySelectorAll(".frame[data-feedback]")) {
    const buttons = [...frame.querySelectorAll("button[data-answer]")];
    for (const button of buttons) {
      button.addEventListener("click", async () => {
        if (button.getAttribute("aria-pressed") === "true") return;
        const id = Number(frame.dataset.feedback);
        const saved = await patch(buttons, { printshotfeedback_set: [{ id, answer: button.dataset.answer }] });
        if (saved) showFeedback(saved.printshotfeedback_set);
      });
    }
  }
})();
