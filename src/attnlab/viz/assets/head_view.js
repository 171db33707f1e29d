/* attnlab head view: attention lines from query tokens (left) to key tokens (right),
   one colour per head, a layer selector, head toggles and sentence-pair filters. */
(function (A) {
  "use strict";
  A.views.head = function (root, data) {
    var state = { layer: data.layer || 0, on: data.heads.map(function () { return true; }), filter: "all" };
    A.header(root, data, data.title || "Head view");
    var controls = A.el("div", { "class": "al-controls" }, root);
    A.select(controls, "Layer", data.layers.map(function (l, k) { return [k, String(l)]; }), state.layer,
      function (v) { state.layer = Number(v); draw(); });
    if (data.segments) {
      A.select(controls, "Attention", Object.keys(A.FILTERS).map(function (f) { return [f, A.FILTERS[f]]; }), "all",
        function (v) { state.filter = v; draw(); });
    }
    var headBox = A.el("div", { "class": "al-heads" }, controls);
    A.el("span", {}, headBox, "Heads");
    var toggles = data.heads.map(function (h, k) {
      var t = A.el("div", { "class": "al-head", title: "head " + h + " (click: toggle, double-click: only this head)",
        style: "background:" + A.headColor(h), "data-head": h }, headBox, String(h));
      t.addEventListener("click", function () { api.toggle(k); });
      t.addEventListener("dblclick", function () { api.only(k); });
      return t;
    });
    A.el("span", { "class": "al-hint" }, controls, "hover a token to follow its attention");
    var stage = A.el("div", { "class": "al-stage" }, root);
    var status = A.el("div", { "class": "al-status" }, root);
    var panel = null;

    function describe(i, where) {
      if (i === null) { status.textContent = ""; return; }
      var mats = data.attention[state.layer], parts = [];
      data.heads.forEach(function (h, k) {
        if (!state.on[k]) { return; }
        var best = -1, bestW = -1;
        for (var j = 0; j < data.tokens.length; j++) {
          var w = where === "left" ? mats[k][i][j] : mats[k][j][i];
          if (w > bestW) { bestW = w; best = j; }
        }
        parts.push("h" + h + ": " + (where === "left" ? "\u2192 " : "\u2190 ") + A.tokenText(data.tokens[best]) + " " + bestW.toFixed(2));
      });
      status.textContent = A.tokenText(data.tokens[i]) + " | " + parts.join("  ");
    }

    function draw() {
      stage.innerHTML = "";
      var idx = A.filterIndices(data, state.filter);
      var mats = [];
      data.heads.forEach(function (h, k) {
        if (state.on[k]) { mats.push({ w: data.attention[state.layer][k], color: A.headColor(h), head: h }); }
      });
      toggles.forEach(function (t, k) { t.classList.toggle("al-off", !state.on[k]); });
      panel = A.linesPanel(stage, {
        tokens: data.tokens, left: idx.left, right: idx.right, mats: mats, threshold: data.threshold,
        width: 440, onHover: describe
      });
      root.setAttribute("data-layer", String(data.layers[state.layer]));
      root.setAttribute("data-lines", String(panel.count));
    }

    var api = {
      setLayer: function (k) { state.layer = k; draw(); return panel.count; },
      setFilter: function (f) { state.filter = f; draw(); return panel.count; },
      toggle: function (k) { state.on[k] = !state.on[k]; draw(); return panel.count; },
      only: function (k) { state.on = state.on.map(function (_, m) { return m === k; }); draw(); return panel.count; },
      hover: function (i, where) { return panel.highlight(i, where || "left"); },
      count: function () { return panel.count; },
      selftest: function () {
        var out = { initial: panel.count };
        out.hoverLeft0 = api.hover(0, "left");
        api.hover(null);
        if (data.layers.length > 1) { out.layer1 = api.setLayer(1); api.setLayer(0); }
        if (data.heads.length > 1) { out.withoutHead0 = api.toggle(0); api.toggle(0); out.onlyHead0 = api.only(0);
          state.on = state.on.map(function () { return true; }); draw(); }
        if (data.segments) { out.filters = {}; Object.keys(A.FILTERS).forEach(function (f) { out.filters[f] = api.setFilter(f); }); api.setFilter("all"); }
        return out;
      }
    };
    draw();
    return api;
  };
})(attnlab);
