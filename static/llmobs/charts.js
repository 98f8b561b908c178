/* Render every <canvas data-chart="ID"> from the JSON in <script id="ID"> (Django's json_script).
 *
 * JSON shape: {"type": "bar"|"line", "labels": [...], "money": "USD"?, "stacked"?: true,
 *              "datasets": [{"label", "data": ["1.23", ...], "type"?: "line", "dashed"?: true}]}
 * Extra keys (e.g. "table", used by the template) are ignored.
 * Amounts arrive as strings (exact decimals); they are converted to numbers only to draw.
 */
(function () {
  "use strict";
  // Distinguishable on white and for common colour-vision deficiencies; grey is "Other".
  var palette = ["#1f4fd1", "#0f766e", "#b45309", "#7c3aed", "#be123c", "#0e7490", "#4d7c0f", "#6b7280"];

  function money(value, currency) {
    var text = Number(value).toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    return currency ? text + " " + currency : text;
  }

  function render(canvas) {
    var source = document.getElementById(canvas.getAttribute("data-chart"));
    if (!source || typeof Chart === "undefined") return;
    var spec = JSON.parse(source.textContent);
    var datasets = spec.datasets.map(function (d, i) {
      var color = d.label === "Other" ? "#9ca3af" : palette[i % palette.length];
      return {
        label: d.label,
        type: d.type || spec.type,
        data: d.data.map(function (v) { return v === null ? null : Number(v); }),
        backgroundColor: d.type === "line" ? color : color + "cc",
        borderColor: color,
        borderWidth: d.type === "line" ? 2 : 0,
        borderDash: d.dashed ? [6, 4] : [],
        pointRadius: 0,
        tension: 0.2,
        borderRadius: 3,
        order: d.type === "line" ? 0 : 1
      };
    });
    var reduceMotion = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    new Chart(canvas, {
      type: spec.type,
      data: { labels: spec.labels, datasets: datasets },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: reduceMotion ? false : { duration: 300 },
        interaction: { mode: "index", intersect: false },
        plugins: {
          legend: { display: datasets.length > 1, position: "bottom" },
          tooltip: {
            callbacks: {
              label: function (ctx) { return ctx.dataset.label + ": " + (spec.money ? money(ctx.parsed.y, spec.money) : ctx.parsed.y.toLocaleString()); }
            }
          }
        },
        scales: {
          x: { stacked: !!spec.stacked, grid: { display: false }, ticks: { maxRotation: 0, autoSkipPadding: 12 } },
          y: { stacked: !!spec.stacked, beginAtZero: true, ticks: { callback: function (v) { return spec.money ? money(v) : v.toLocaleString(); } } }
        }
      }
    });
    canvas.setAttribute("data-rendered", "true");
  }

  function renderAll() {
    Array.prototype.forEach.call(document.querySelectorAll("canvas[data-chart]"), render);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", renderAll);
  else renderAll();
})();
