// The Prints pages: local times, the print's graphs, and the user's answers (verdict and
// feedback frames), sent through the v1 print API, whose role checks and messages we show.
"use strict";
(() => {
  const localTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  for (const node of document.querySelectorAll("time[data-local]")) {
    const at = new Date(node.getAttribute("datetime"));
    if (!Number.isNaN(at.getTime())) node.textContent = localTime.format(at);
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
