/* attnlab views: shared helpers (written for attnlab; no external code, no network). */
var attnlab = (typeof window !== "undefined" && window.attnlab) || {};
if (typeof window !== "undefined") { window.attnlab = attnlab; }
attnlab.views = attnlab.views || {};

(function (A) {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";

  /* Create an HTML element with attributes and optional text, appended to parent. */
  A.el = function (tag, attrs, parent, text) {
    var node = document.createElement(tag);
    for (var k in (attrs || {})) { node.setAttribute(k, attrs[k]); }
    if (text !== undefined) { node.textContent = text; }
    if (parent) { parent.appendChild(node); }
    return node;
  };

  /* Same for SVG elements. */
  A.svg = function (tag, attrs, parent, text) {
    var node = document.createElementNS(SVGNS, tag);
    for (var k in (attrs || {})) { node.setAttribute(k, attrs[k]); }
    if (text !== undefined) { node.textContent = text; }
    if (parent) { parent.appendChild(node); }
    return node;
  };

  /* Twelve distinguishable head colours; more heads cycle through hues. */
  var PALETTE = ["#1f6fd1", "#e8590c", "#2b9348", "#c92a2a", "#7048e8", "#8d5524",
                 "#d6336c", "#495057", "#a9a20a", "#0c8599", "#5c940d", "#862e9c"];
  A.headColor = function (h) {
    if (h < PALETTE.length) { return PALETTE[h]; }
    return "hsl(" + ((h * 137.5) % 360).toFixed(0) + ",65%,45%)";
  };

  /* White -> blue for a weight in [0, 1]. */
  A.blues = function (w) {
    var t = Math.max(0, Math.min(1, w));
    var r = Math.round(255 - t * (255 - 24)), g = Math.round(255 - t * (255 - 80)), b = Math.round(255 - t * (255 - 170));
    return "rgb(" + r + "," + g + "," + b + ")";
  };

  /* Blue (negative) - white - red (positive), scaled so |v| = vmax is full colour. */
  A.diverging = function (v, vmax) {
    var t = vmax > 0 ? Math.max(-1, Math.min(1, v / vmax)) : 0;
    var a = Math.abs(t);
    if (t >= 0) {
      return "rgb(255," + Math.round(255 - a * 200) + "," + Math.round(255 - a * 210) + ")";
    }
    return "rgb(" + Math.round(255 - a * 215) + "," + Math.round(255 - a * 150) + ",255)";
  };

  /* Token indices kept on the left (queries) and right (keys) for a sentence-pair filter. */
  A.FILTERS = { all: "All", AA: "A \u2192 A", BB: "B \u2192 B", AB: "A \u2192 B", BA: "B \u2192 A" };
  A.filterIndices = function (data, filter) {
    var n = data.tokens.length, all = [], segA = [], segB = [];
    for (var i = 0; i < n; i++) {
      all.push(i);
      if (data.segments) { (data.segments[i] === 0 ? segA : segB).push(i); }
    }
    if (!data.segments || filter === "all") { return { left: all, right: all }; }
    var pick = { A: segA, B: segB };
    return { left: pick[filter[0]], right: pick[filter[1]] };
  };

  /* A <select> with {value: label} options, calling onChange(value). */
  A.select = function (parent, label, options, value, onChange) {
    var wrap = A.el("label", { "class": "al-control" }, parent, label + " ");
    var sel = A.el("select", {}, wrap);
    options.forEach(function (o) {
      var opt = A.el("option", { value: String(o[0]) }, sel, o[1]);
      if (String(o[0]) === String(value)) { opt.selected = true; }
    });
    sel.addEventListener("change", function () { onChange(sel.value); });
    return sel;
  };

  /* Short display form of a token (keeps leading-space markers visible). */
  A.tokenText = function (t) {
    var s = String(t).replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
    if (s.length === 0) { return "\u2205"; }
    if (s.trim().length === 0) { return "\u2423".repeat(Math.min(s.length, 3)); }
    var chars = Array.from(s);  /* code points: cutting UTF-16 units split an emoji into a lone surrogate */
    return chars.length > 14 ? chars.slice(0, 13).join("") + "\u2026" : s;
  };

  /* Attention lines from query tokens (left) to key tokens (right).
     opts: tokens, left, right (index lists), mats [{w: TxT, color, head}], threshold, width,
     rowHeight, onHover(i|null, side). Returns {svg, count, highlight(i, side)}. */
  A.linesPanel = function (parent, opts) {
    var rowH = opts.rowHeight || 20, width = opts.width || 420, pad = 8;
    var textW = opts.textWidth || 110;
    var n = Math.max(opts.left.length, opts.right.length);
    var top = opts.columnLabels === false ? 0 : 18;
    var height = n * rowH + 2 * pad + top;
    var svg = A.svg("svg", { width: width, height: height, "class": "al-lines", role: "img" }, parent);
    var x1 = textW, x2 = width - textW;
    var yOf = function (k) { return top + pad + k * rowH + rowH / 2; };
    if (top) {
      A.svg("text", { x: x1 - 8, y: 13, "text-anchor": "end", "class": "al-axis al-colhead" }, svg, "query");
      A.svg("text", { x: x2 + 8, y: 13, "text-anchor": "start", "class": "al-axis al-colhead" }, svg, "key");
    }
    var gLines = A.svg("g", { "class": "al-line-group" }, svg);
    var leftPos = {}, rightPos = {};
    opts.left.forEach(function (i, k) { leftPos[i] = k; });
    opts.right.forEach(function (j, k) { rightPos[j] = k; });
    var lines = [];
    opts.mats.forEach(function (m) {
      opts.left.forEach(function (i) {
        opts.right.forEach(function (j) {
          var w = m.w[i][j];
          if (w === null || w < opts.threshold) { return; }
          var line = A.svg("line", {
            x1: x1 + 4, y1: yOf(leftPos[i]), x2: x2 - 4, y2: yOf(rightPos[j]),
            stroke: m.color, "stroke-opacity": Math.min(1, w).toFixed(3), "stroke-width": 2,
            "data-q": i, "data-k": j, "data-head": m.head, "class": "al-line"
          }, gLines);
          lines.push(line);
        });
      });
    });
    svg.setAttribute("data-lines", String(lines.length));
    var side = function (idx, pos, isLeft) {
      idx.forEach(function (i) {
        var g = A.svg("g", { "class": "al-token " + (isLeft ? "al-left" : "al-right"), "data-index": i }, svg);
        var y = yOf(pos[i]);
        A.svg("rect", { x: isLeft ? 2 : x2 + 2, y: y - rowH / 2 + 1, width: textW - 6, height: rowH - 2, rx: 3, "class": "al-token-box" }, g);
        A.svg("text", {
          x: isLeft ? x1 - 8 : x2 + 8, y: y + 4, "text-anchor": isLeft ? "end" : "start"
        }, g, A.tokenText(opts.tokens[i]));
        g.addEventListener("mouseenter", function () { api.highlight(i, isLeft ? "left" : "right"); });
        g.addEventListener("mouseleave", function () { api.highlight(null); });
      });
    };
    side(opts.left, leftPos, true);
    side(opts.right, rightPos, false);
    var api = {
      svg: svg,
      count: lines.length,
      visible: lines.length,
      highlight: function (i, where) {
        var shown = 0;
        lines.forEach(function (line) {
          var key = where === "left" ? "data-q" : "data-k";
          var on = i === null || Number(line.getAttribute(key)) === i;
          line.style.display = on ? "" : "none";
          if (on) { shown++; }
        });
        svg.querySelectorAll(".al-token").forEach(function (g) {
          var mine = i !== null && Number(g.getAttribute("data-index")) === i &&
            g.classList.contains(where === "left" ? "al-left" : "al-right");
          g.classList.toggle("al-active", mine);
        });
        api.visible = shown;
        svg.setAttribute("data-visible", String(shown));
        if (opts.onHover) { opts.onHover(i, where); }
        return shown;
      }
    };
    return api;
  };

  /* An SVG heatmap of mat[i][j] for i in rows, j in cols; color(v) gives the fill. */
  A.heatmap = function (parent, opts) {
    var cell = opts.cell || 16, labelW = opts.labelWidth || 90, top = opts.labelHeight || 90;
    var rows = opts.rows, cols = opts.cols;
    var svg = A.svg("svg", {
      width: labelW + cols.length * cell + 8, height: top + rows.length * cell + 8, "class": "al-heatmap"
    }, parent);
    var count = 0;
    rows.forEach(function (i, r) {
      A.svg("text", { x: labelW - 4, y: top + r * cell + cell * 0.7, "text-anchor": "end", "class": "al-axis" }, svg, A.tokenText(opts.tokens[i]));
      cols.forEach(function (j, c) {
        var v = opts.mat[i][j];
        var rect = A.svg("rect", {
          x: labelW + c * cell, y: top + r * cell, width: cell - 1, height: cell - 1,
          fill: v === null ? "#eee" : opts.color(v), "class": "al-cell", "data-q": i, "data-k": j
        }, svg);
        A.svg("title", {}, rect, A.tokenText(opts.tokens[i]) + " \u2192 " + A.tokenText(opts.tokens[j]) + ": " + (v === null ? "masked" : (+v).toFixed(4)));
        count++;
      });
    });
    cols.forEach(function (j, c) {
      var x = labelW + c * cell + cell * 0.7, y = top - 4;
      A.svg("text", { x: x, y: y, transform: "rotate(-60 " + x + " " + y + ")", "class": "al-axis" }, svg, A.tokenText(opts.tokens[j]));
    });
    svg.setAttribute("data-cells", String(count));
    return svg;
  };

  /* A small line drawing on a canvas (model-view thumbnails). */
  A.thumbnail = function (canvas, mat, idx, color, threshold) {
    var ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
    ctx.clearRect(0, 0, W, H);
    var n = Math.max(idx.left.length, idx.right.length), step = (H - 4) / Math.max(1, n);
    ctx.strokeStyle = color; ctx.lineWidth = 1;
    idx.left.forEach(function (i, a) {
      idx.right.forEach(function (j, b) {
        var w = mat[i][j];
        if (w === null || w < threshold) { return; }
        ctx.globalAlpha = Math.min(1, w);
        ctx.beginPath(); ctx.moveTo(4, 2 + (a + 0.5) * step); ctx.lineTo(W - 4, 2 + (b + 0.5) * step); ctx.stroke();
      });
    });
    ctx.globalAlpha = 1;
  };

  /* Header line naming the model and any interventions. */
  A.header = function (root, data, title) {
    var h = A.el("div", { "class": "al-header" }, root);
    A.el("span", { "class": "al-title" }, h, title);
    A.el("span", { "class": "al-model" }, h, data.model + " \u00b7 " + data.tokens.length + " tokens");
    if (data.interventions && data.interventions.length) {
      A.el("div", { "class": "al-interventions" }, h, "interventions: " + data.interventions.join(", "));
    }
    return h;
  };

  /* Draw a view into root; record success or the error on the root element. */
  A.run = function (root, data) {
    try {
      var view = A.views[data.kind];
      if (!view) { throw new Error("unknown view kind " + data.kind); }
      root.innerHTML = "";
      var api = view(root, data);
      root.attnlabApi = api;
      if (typeof location !== "undefined" && /selftest/.test(location.hash) && api && api.selftest) {
        root.setAttribute("data-selftest", JSON.stringify(api.selftest()));
      }
      root.setAttribute("data-status", "ok");
    } catch (err) {
      root.setAttribute("data-status", "error");
      root.setAttribute("data-error", String(err && err.stack ? err.stack : err));
      A.el("pre", { "class": "al-error" }, root, "attnlab view failed: " + err);
    }
  };
})(attnlab);
