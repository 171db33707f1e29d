/* attnlab model view: every selected layer x head as a thumbnail; click one to enlarge it. */
(function (A) {
  "use strict";
  A.views.model = function (root, data) {
    var state = { filter: "all", selected: null };
    A.header(root, data, data.title || "Model view");
    var controls = A.el("div", { "class": "al-controls" }, root);
    if (data.segments) {
      A.select(controls, "Attention", Object.keys(A.FILTERS).map(function (f) { return [f, A.FILTERS[f]]; }), "all",
        function (v) { state.filter = v; drawGrid(); if (state.selected) { api.open(state.selected[0], state.selected[1]); } });
    }
    A.el("span", { "class": "al-hint" }, controls, "rows: layers, columns: heads \u00b7 click a thumbnail to enlarge it");
    var grid = A.el("div", { "class": "al-grid" }, root);
    var detail = A.el("div", { "class": "al-detail" }, root);
    var status = A.el("div", { "class": "al-status" }, root);
    var thumb = data.thumbnail || 76;
    grid.style.gridTemplateColumns = "56px repeat(" + data.heads.length + ", " + (thumb + 2) + "px)";
    var canvases = [];

    function drawGrid() {
      grid.innerHTML = ""; canvases = [];
      var idx = A.filterIndices(data, state.filter);
      A.el("div", { "class": "al-collabel" }, grid, "");
      data.heads.forEach(function (h) { A.el("div", { "class": "al-collabel" }, grid, "head " + h); });
      data.layers.forEach(function (l, a) {
        A.el("div", { "class": "al-rowlabel" }, grid, "layer " + l);
        data.heads.forEach(function (h, b) {
          var c = A.el("canvas", { width: thumb, height: thumb, "class": "al-cellbox", "data-layer": l, "data-head": h,
            title: "layer " + l + ", head " + h }, grid);
          A.thumbnail(c, data.attention[a][b], idx, A.headColor(h), data.threshold);
          c.addEventListener("click", function () { api.open(a, b); });
          canvases.push(c);
        });
      });
      root.setAttribute("data-cells", String(canvases.length));
    }

    var api = {
      open: function (a, b) {
        state.selected = [a, b];
        canvases.forEach(function (c) {
          c.classList.toggle("al-selected", Number(c.getAttribute("data-layer")) === data.layers[a] &&
            Number(c.getAttribute("data-head")) === data.heads[b]);
        });
        detail.innerHTML = "";
        var l = data.layers[a], h = data.heads[b];
        var bar = A.el("div", { "class": "al-controls" }, detail);
        A.el("strong", {}, bar, "layer " + l + ", head " + h);
        var close = A.el("button", { type: "button" }, bar, "close");
        close.addEventListener("click", function () { api.close(); });
        var idx = A.filterIndices(data, state.filter);
        var panel = A.linesPanel(detail, {
          tokens: data.tokens, left: idx.left, right: idx.right,
          mats: [{ w: data.attention[a][b], color: A.headColor(h), head: h }], threshold: data.threshold, width: 440,
          onHover: function (i, where) {
            if (i === null) { status.textContent = ""; return; }
            status.textContent = "layer " + l + " head " + h + ": " + A.tokenText(data.tokens[i]) + (where === "left" ? " attends" : " is attended");
          }
        });
        root.setAttribute("data-open", l + "." + h);
        root.setAttribute("data-detail-lines", String(panel.count));
        return panel.count;
      },
      close: function () { detail.innerHTML = ""; state.selected = null; root.removeAttribute("data-open");
        canvases.forEach(function (c) { c.classList.remove("al-selected"); }); },
      selftest: function () {
        var out = { cells: canvases.length };
        var a = data.layers.length - 1, b = data.heads.length - 1;
        canvases[a * data.heads.length + b].dispatchEvent(new MouseEvent("click"));
        out.opened = root.getAttribute("data-open");
        out.detailLines = Number(root.getAttribute("data-detail-lines"));
        api.close();
        out.closed = !root.hasAttribute("data-open");
        return out;
      }
    };
    drawGrid();
    return api;
  };
})(attnlab);
