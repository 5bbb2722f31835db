/* Click (or Enter on) a column header of a table.sortable to sort by it; again to reverse.
   Cells sort by their data-sort number when they have one, else by their text. */
(function () {
  "use strict";
  function key(cell) {
    if (!cell) return { n: NaN, s: "" };
    var raw = cell.getAttribute("data-sort");
    var n = raw === null || raw === "" ? NaN : parseFloat(raw);
    return { n: n, s: (cell.textContent || "").trim().toLowerCase() };
  }
  function compare(a, b) {
    var an = !isNaN(a.n), bn = !isNaN(b.n);
    if (an && bn) return a.n === b.n ? 0 : (a.n < b.n ? -1 : 1);
    if (an !== bn) return an ? -1 : 1;
    return a.s < b.s ? -1 : (a.s > b.s ? 1 : 0);
  }
  function sortBy(table, th, col) {
    var body = table.tBodies[0];
    if (!body) return;
    var asc = th.getAttribute("aria-sort") !== "ascending";
    var rows = Array.prototype.slice.call(body.rows).map(function (row, i) {
      return { row: row, k: key(row.cells[col]), i: i };
    });
    rows.sort(function (a, b) {
      var c = compare(a.k, b.k);
      return (asc ? c : -c) || a.i - b.i;
    });
    rows.forEach(function (r) { body.appendChild(r.row); });
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.setAttribute("aria-sort", "none"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
  }
  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, function (table) {
    if (!table.tHead || !table.tHead.rows.length) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.setAttribute("aria-sort", "none");
      th.addEventListener("click", function () { sortBy(table, th, col); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th, col); }
      });
    });
    table.setAttribute("data-sortable", "ready");
  });
  document.documentElement.setAttribute("data-report-script", "ok");

  /* Self-check once everything has loaded: every image (all inlined) must have decoded.
     A broken one is counted on <html data-broken-images> and reported on the console. */
  window.addEventListener("load", function () {
    var bad = Array.prototype.filter.call(document.images, function (im) {
      return !im.complete || im.naturalWidth === 0;
    });
    document.documentElement.setAttribute("data-broken-images", String(bad.length));
    if (bad.length) {
      console.error("report: " + bad.length + " image(s) did not load: " +
                    bad.map(function (im) { return im.alt || im.src.slice(0, 60); }).join("; "));
    }
  });
})();
