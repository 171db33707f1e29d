/* attnlab neuron view (after Vig 2019): for one head and one query token, the query vector q,
   each key vector k, their elementwise product q*k, the scaled dot product q.k and the softmax. */
(function (A) {
  "use strict";
  A.views.neuron = function (root, data) {
    var state = { layer: 0, head: 0, query: data.query, filter: "all" };
    A.header(root, data, data.title || "Neuron view");
    var controls = A.el("div", { "class": "al-controls" }, root);
    A.select(controls, "Layer", data.layers.map(function (l, k) { return [k, String(l)]; }), 0,
      function (v) { state.layer = Number(v); draw(); });
    A.select(controls, "Head", data.heads.map(function (h, k) { return [k, String(h)]; }), 0,
      function (v) { state.head = Number(v); draw(); });
    if (data.segments) {
      A.select(controls, "Attention", Object.keys(A.FILTERS).map(function (f) { return [f, A.FILTERS[f]]; }), "all",
        function (v) { state.filter = v; draw(); });
    }
    var hint = A.el("span", { "class": "al-hint" }, controls, "");
    var body = A.el("div", { "class": "al-panels" }, root);
    var rowsShown = 0;

    function strip(parent, vec, vmax) {
      var d = vec.length, cw = Math.max(1, Math.min(10, Math.floor(320 / d)));
      var c = A.el("canvas", { width: d * cw, height: 12, "class": "al-strip" }, parent);
      var ctx = c.getContext("2d");
      for (var i = 0; i < d; i++) { ctx.fillStyle = A.diverging(vec[i], vmax); ctx.fillRect(i * cw, 0, cw, 12); }
      return c;
    }
    /* Colour scale: the 95th percentile of |x|, so a few outlier dimensions do not wash out the rest. */
    function maxAbs(vecs) {
      var all = [];
      vecs.forEach(function (v) { v.forEach(function (x) { all.push(Math.abs(x)); }); });
      all.sort(function (x, y) { return x - y; });
      return all.length ? (all[Math.floor(0.95 * (all.length - 1))] || all[all.length - 1] || 1) : 1;
    }

    function draw() {
      body.innerHTML = "";
      var a = state.layer, b = state.head, idx = A.filterIndices(data, state.filter);
      var cap = data.softcaps ? data.softcaps[a] : null, scaled = "(\u03a3 q\u00d7k) \u00d7 " + (+data.scales[a]).toPrecision(4);
      hint.textContent = "click a query token \u00b7 blue < 0 < red \u00b7 q\u00b7k = " +
        (cap ? (+cap).toPrecision(4) + " \u00b7 tanh(" + scaled + " / " + (+cap).toPrecision(4) + ")" : scaled);
      if (idx.left.indexOf(state.query) < 0) { state.query = idx.left[idx.left.length - 1]; }
      var qlist = A.el("div", { "class": "al-qlist" }, body);
      A.el("div", { "class": "al-hint" }, qlist, "query");
      idx.left.forEach(function (i) {
        var t = A.el("div", { "class": "al-qtoken" + (i === state.query ? " al-selected" : ""), "data-index": i }, qlist, A.tokenText(data.tokens[i]));
        t.addEventListener("click", function () { state.query = i; draw(); });
      });
      var q = data.q[a][b][state.query], K = data.k[a][b], S = data.scores[a][b][state.query], P = data.attention[a][b][state.query];
      var keys = idx.right.filter(function (j) { return S[j] !== null; });
      var prods = keys.map(function (j) { return q.map(function (x, n) { return x * K[j][n]; }); });
      var vQ = maxAbs([q]), vK = maxAbs(keys.map(function (j) { return K[j]; })), vProd = maxAbs(prods);
      var table = A.el("table", { "class": "al-neurons" }, body);
      var head = A.el("tr", {}, A.el("thead", {}, table));
      ["", "key", "query q / key k", "q \u00d7 k (elementwise)", "q \u00b7 k (scaled)", "softmax"].forEach(function (t) { A.el("th", {}, head, t); });
      var tbody = A.el("tbody", {}, table);
      var qrow = A.el("tr", { "class": "al-query-row" }, tbody);
      A.el("td", { "class": "al-hint" }, qrow, "query");
      A.el("td", {}, qrow, A.tokenText(data.tokens[state.query]));
      strip(A.el("td", {}, qrow), q, vQ);
      A.el("td", {}, qrow); A.el("td", {}, qrow); A.el("td", {}, qrow);
      var sMax = 0;
      keys.forEach(function (j) { sMax = Math.max(sMax, Math.abs(S[j])); });
      keys.forEach(function (j, r) {
        var tr = A.el("tr", { "class": "al-key-row", "data-key": j }, tbody);
        A.el("td", { "class": "al-hint" }, tr, r === 0 ? "keys" : "");
        A.el("td", {}, tr, A.tokenText(data.tokens[j]));
        strip(A.el("td", {}, tr), K[j], vK);
        strip(A.el("td", {}, tr), prods[r], vProd);
        var sc = A.el("td", { "class": "al-num", style: "background:" + A.diverging(S[j], sMax) }, tr, (+S[j]).toFixed(3));
        var sm = A.el("td", { "class": "al-num" }, tr);
        A.el("span", { "class": "al-bar", style: "width:" + Math.round(P[j] * 90) + "px;background:" + A.headColor(data.heads[b]) }, sm);
        A.el("span", {}, sm, " " + (+P[j]).toFixed(3));
      });
      rowsShown = keys.length;
      root.setAttribute("data-rows", String(rowsShown));
      root.setAttribute("data-query", String(state.query));
      root.setAttribute("data-layer", String(data.layers[a]));
      root.setAttribute("data-head", String(data.heads[b]));
    }

    var api = {
      setQuery: function (i) { state.query = i; draw(); return rowsShown; },
      set: function (a, b) { state.layer = a; state.head = b; draw(); return rowsShown; },
      setFilter: function (f) { state.filter = f; draw(); return rowsShown; },
      selftest: function () {
        var out = { initial: rowsShown, query: state.query };
        var first = root.querySelector(".al-qtoken[data-index='0']");
        if (first) { first.dispatchEvent(new MouseEvent("click")); out.query0 = rowsShown; }
        out.last = api.setQuery(data.tokens.length - 1);
        if (data.segments) { out.filters = {}; Object.keys(A.FILTERS).forEach(function (f) { out.filters[f] = api.setFilter(f); }); api.setFilter("all"); }
        return out;
      }
    };
    draw();
    return api;
  };
})(attnlab);
