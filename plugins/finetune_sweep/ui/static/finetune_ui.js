// The plugin pages' behaviour: sortable tables and plotly charts. No data lives here: the page
// embeds its chart specs as JSON (#chart-data), and the tables work without this script.
(function () {
  "use strict";

  function cellValue(row, index) {
    const cell = row.cells[index];
    if (!cell) return { empty: true };
    const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
    if (raw === "" || raw === "–") return { empty: true };
    const number = Number(raw);
    return Number.isNaN(number) ? { text: raw } : { number: number };
  }

  function compare(a, b) {
    if (a.empty || b.empty) return a.empty && b.empty ? 0 : a.empty ? 1 : -1; // missing values last
    if (a.number !== undefined && b.number !== undefined) return a.number - b.number;
    return String(a.text !== undefined ? a.text : a.number).localeCompare(String(b.text !== undefined ? b.text : b.number));
  }

  function makeSortable(table) {
    const headers = table.tHead ? Array.from(table.tHead.rows[0].cells) : [];
    headers.forEach(function (th, index) {
      th.tabIndex = 0;
      th.setAttribute("aria-sort", "none");
      function sort() {
        const ascending = th.getAttribute("aria-sort") !== "ascending";
        headers.forEach(function (other) { other.setAttribute("aria-sort", "none"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        const body = table.tBodies[0];
        const rows = Array.from(body.rows);
        rows.sort(function (x, y) {
          const a = cellValue(x, index), b = cellValue(y, index);
          const order = compare(a, b);
          return a.empty || b.empty ? order : ascending ? order : -order; // missing values stay last
        });
        rows.forEach(function (row) { body.appendChild(row); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (event) { if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sort(); } });
    });
  }

  function drawCharts() {
    const source = document.getElementById("chart-data");
    if (!source || typeof Plotly === "undefined") return;
    JSON.parse(source.textContent).forEach(function (chart) {
      const target = document.getElementById(chart.id);
      if (target) Plotly.newPlot(target, chart.figure.data, chart.figure.layout, { displaylogo: false, responsive: true });
    });
  }

  document.querySelectorAll("table.sortable").forEach(makeSortable);
  drawCharts();
})();
