/* attnlab diff view: clean vs intervened attention for one input.
   Top: every layer x head coloured by how much its pattern changed (click to pick one).
   Below: the chosen head clean and intervened (lines), and intervened - clean (red more, blue less). */
(function (A) {
  "use strict";
  A.views.diff = function (root, data) {
    var state = { a: data.start[0], b: data.start[1] };
    A.header(root, data, data.title || "Diff view");
    A.el("div", { "class": "al-hint" }, root,
      "cell colour: largest |change| of any attention weight in that head (max over all heads: " + data.max_change.toFixed(3) + ") \u00b7 click a cell");
    var grid = A.el("div", { "class": "al-grid" }, root);
    grid.style.gridTemplateColumns = "56px repeat(" + data.heads.length + ", 38px)";
    var detail = A.el("div", { "class": "al-detail" }, root);
    var cells = [];
    A.el("div", { "class": "al-collabel" }, grid, "");
    data.heads.forEach(function (h) { A.el("div", { "class": "al-collabel" }, grid, "h" + h); });
    data.layers.forEach(function (l, a) {
      A.el("div", { "class": "al-rowlabel" }, grid, "layer " + l);
      data.heads.forEach(function (h, b) {
        var v = data.change[a][b];
        var c = A.el("div", { "class": "al-cellbox al-change", "data-layer": l, "data-head": h,
          title: "layer " + l + ", head " + h + ": max |\u0394| = " + v.toFixed(4),
          style: "height:24px;background:" + A.diverging(v, data.max_change || 1) }, grid);
        c.addEventListener("click", function () { api.show(a, b); });
        cells.push(c);
      });
    });
    root.setAttribute("data-cells", String(cells.length));

    var api = {
      show: function (a, b) {
        state.a = a; state.b = b;
        cells.forEach(function (c, k) { c.classList.toggle("al-selected", k === a * data.heads.length + b); });
        detail.innerHTML = "";
        var l = data.layers[a], h = data.heads[b];
        A.el("div", { style: "font-weight:600;margin-bottom:6px" }, detail, "layer " + l + ", head " + h);
        var panels = A.el("div", { "class": "al-panels" }, detail);
        var idx = A.filterIndices(data, "all");
        var clean = data.clean[a][b], edited = data.intervened[a][b];
        var p1 = A.el("div", { "class": "al-panel" }, panels);
        A.el("h4", {}, p1, "clean");
        var l1 = A.linesPanel(p1, { tokens: data.tokens, left: idx.left, right: idx.right, width: 300, textWidth: 90,
          mats: [{ w: clean, color: "#1f6fd1", head: h }], threshold: data.threshold });
        var p2 = A.el("div", { "class": "al-panel" }, panels);
        A.el("h4", {}, p2, "intervened");
        var l2 = A.linesPanel(p2, { tokens: data.tokens, left: idx.left, right: idx.right, width: 300, textWidth: 90,
          mats: [{ w: edited, color: "#c92a2a", head: h }], threshold: data.threshold });
        var diff = clean.map(function (row, i) { return row.map(function (w, j) {
          return (w === null || edited[i][j] === null) ? null : edited[i][j] - w; }); });
        var vmax = 0;
        diff.forEach(function (row) { row.forEach(function (v) { if (v !== null) { vmax = Math.max(vmax, Math.abs(v)); } }); });
        var p3 = A.el("div", { "class": "al-panel" }, panels);
        A.el("h4", {}, p3, "intervened \u2212 clean (rows: queries, columns: keys)");
        var cell = Math.max(8, Math.min(22, Math.floor(360 / data.tokens.length)));
        var hm = A.heatmap(p3, { tokens: data.tokens, rows: idx.left, cols: idx.right, mat: diff, cell: cell,
          color: function (v) { return A.diverging(v, vmax || 1); } });
        var legend = A.el("div", { "class": "al-legend" }, p3);
        A.el("span", { "class": "al-swatch", style: "background:" + A.diverging(-1, 1) }, legend);
        A.el("span", {}, legend, "\u2212" + vmax.toFixed(3) + " less attention");
        A.el("span", { "class": "al-swatch", style: "background:" + A.diverging(1, 1) }, legend);
        A.el("span", {}, legend, "+" + vmax.toFixed(3) + " more attention");
        root.setAttribute("data-open", l + "." + h);
        root.setAttribute("data-diff-cells", hm.getAttribute("data-cells"));
        root.setAttribute("data-clean-lines", String(l1.count));
        root.setAttribute("data-intervened-lines", String(l2.count));
        return { clean: l1.count, intervened: l2.count, cells: Number(hm.getAttribute("data-cells")) };
      },
      selftest: function () {
        var out = { cells: cells.length, start: root.getAttribute("data-open") };
        cells[0].dispatchEvent(new MouseEvent("click"));
        out.clicked = root.getAttribute("data-open");
        out.diffCells = Number(root.getAttribute("data-diff-cells"));
        api.show(data.start[0], data.start[1]);
        return out;
      }
    };
    api.show(state.a, state.b);
    return api;
  };
})(attnlab);
