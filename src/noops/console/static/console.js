/* noops console: local times, sparklines, uPlot charts with deploy markers, the live log tail.
   Progressive: every page is readable without this file; it adds charts and formatting. */
"use strict";
(function () {
  const fmt = new Intl.DateTimeFormat(undefined, {dateStyle: "medium", timeStyle: "medium"});
  const short = new Intl.DateTimeFormat(undefined, {hour: "2-digit", minute: "2-digit", second: "2-digit"});

  function within(root, selector) {
    const found = Array.prototype.slice.call(root.querySelectorAll(selector));
    if (root.matches && root.matches(selector)) found.push(root);
    return found;
  }

  function localTimes(root) {
    within(root, "time[datetime], time[data-epoch]").forEach(function (el) {
      if (el.dataset.local) return;
      const raw = el.getAttribute("datetime");
      const d = el.dataset.epoch ? new Date(parseFloat(el.dataset.epoch) * 1000) : new Date(raw);
      if (isNaN(d)) return;
      el.title = d.toISOString();
      el.textContent = fmt.format(d);
      el.dataset.local = "1";
    });
  }

  function sparklines(root) {
    within(root, "svg[data-spark]").forEach(function (svg) {
      if (svg.dataset.drawn) return;
      svg.dataset.drawn = "1";
      const ys = JSON.parse(svg.dataset.spark);
      const max = Math.max.apply(null, ys), min = Math.min.apply(null, ys);
      const span = max - min || 1;
      const pts = ys.map(function (y, i) {
        const h = max === min ? 10 : 20 * (y - min) / span;
        return (100 * i / Math.max(ys.length - 1, 1)).toFixed(1) + "," + (22 - h).toFixed(1);
      }).join(" ");
      svg.innerHTML = '<polyline fill="none" stroke="currentColor" stroke-width="1.5" vector-effect="non-scaling-stroke" points="' + pts + '"></polyline>';
    });
  }

  function width(el) { return Math.max(260, el.clientWidth - 4); }

  function markerButtons(u, fig, markers) {
    fig.querySelectorAll(".marker-flag").forEach(function (b) { b.remove(); });
    markers.forEach(function (m) {
      const x = u.valToPos(m.at_epoch_s, "x");
      if (x < 0 || x > u.bbox.width / devicePixelRatio) return;
      const b = document.createElement("button");
      b.type = "button";
      b.className = "marker-flag";
      b.textContent = m.version;
      b.title = m.kind + " " + m.version + " — click for before/after";
      b.setAttribute("aria-label", "Deploy " + m.version + ": before/after comparison");
      b.dataset.marker = m.id;
      const o = u.over.getBoundingClientRect(), f = fig.getBoundingClientRect();
      b.style.left = (o.left - f.left + x) + "px";
      b.style.top = (o.top - f.top) + "px";
      b.addEventListener("click", function () {
        htmx.ajax("GET", "/deployments/" + m.id, {target: "#deploy-detail"});
      });
      fig.appendChild(b);
    });
  }

  function appCharts() {
    const data = document.getElementById("app-charts");
    if (!data || !window.uPlot) return;
    const cfg = JSON.parse(data.textContent);
    const s = cfg.series, markers = cfg.markers;
    const plots = [];
    document.querySelectorAll("figure[data-chart]").forEach(function (fig) {
      const key = fig.dataset.chart;
      const opts = {
        width: width(fig), height: 160,
        series: [{}, {label: fig.dataset.label, stroke: key === "error_pct" ? "#c62828" : "#1565c0",
                     fill: key === "error_pct" ? "rgba(198,40,40,.08)" : "rgba(21,101,192,.08)", spanGaps: false}],
        axes: [{}, {size: 50}],
        legend: {show: true},
        scales: {y: {range: function (u, lo, hi) { return [0, Math.max(hi * 1.1, key === "error_pct" ? 1 : 0.001)]; }}},
        hooks: {
          draw: [function (u) {
            const ctx = u.ctx;
            ctx.save();
            ctx.strokeStyle = "#6a1b9a"; ctx.setLineDash([4, 3]); ctx.lineWidth = devicePixelRatio;
            markers.forEach(function (m) {
              const x = Math.round(u.valToPos(m.at_epoch_s, "x", true));
              if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
              ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
            });
            ctx.restore();
            markerButtons(u, fig, markers);
          }]
        }
      };
      plots.push([fig, new uPlot(opts, [s.x, s[key]], fig)]);
    });
    window.addEventListener("resize", function () {
      plots.forEach(function (p) { p[1].setSize({width: width(p[0]), height: 160}); });
    });
  }

  const palette = ["#1565c0", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457"];

  function usageCharts() {
    const data = document.getElementById("usage-charts");
    if (!data || !window.uPlot) return;
    const u = JSON.parse(data.textContent);
    const plots = [];
    document.querySelectorAll("figure[data-usage]").forEach(function (fig) {
      const key = fig.dataset.usage, unit = fig.dataset.unit;
      const series = [{}].concat(u.instances.map(function (name, i) {
        return {label: name + " (" + unit + ")", stroke: palette[i % palette.length], spanGaps: false};
      }));
      plots.push([fig, new uPlot({width: width(fig), height: 140, series: series, axes: [{}, {size: 50}],
        scales: {y: {range: function (p, lo, hi) { return [0, Math.max(hi * 1.1, 1)]; }}}},
        [u.x].concat(u[key]), fig)]);
    });
    window.addEventListener("resize", function () {
      plots.forEach(function (p) { p[1].setSize({width: width(p[0]), height: 140}); });
    });
  }

  function scatter() {
    const data = document.getElementById("trace-scatter");
    const fig = document.querySelector("figure[data-scatter]");
    if (!data || !fig || !window.uPlot) return;
    const s = JSON.parse(data.textContent);
    const dots = function (color) {
      return {stroke: color, fill: color, paths: function () { return null; }, points: {show: true, size: 6, fill: color}};
    };
    const u = new uPlot({
      width: width(fig), height: 220,
      series: [{}, Object.assign({label: "ok (ms)"}, dots("#1565c0")), Object.assign({label: "error (ms)"}, dots("#c62828"))],
      axes: [{}, {size: 55}],
      cursor: {points: {size: 10}},
    }, [s.x, s.ok, s.error], fig);
    u.over.addEventListener("click", function () {
      const i = u.cursor.idx;
      if (i != null && s.ids[i]) window.location.href = "/traces/" + s.ids[i];
    });
    window.addEventListener("resize", function () { u.setSize({width: width(fig), height: 220}); });
  }

  function probeCharts() {
    document.querySelectorAll("section.probe").forEach(function (sec) {
      const data = sec.querySelector("script.probe-data");
      const fig = sec.querySelector("figure[data-probe-chart]");
      if (!data || !fig || !window.uPlot) return;
      const s = JSON.parse(data.textContent);
      if (!s.x.length) return;
      new uPlot({width: width(fig), height: 120, series: [{}, {label: "ms", stroke: "#2e7d32", fill: "rgba(46,125,50,.08)"}],
                 axes: [{}, {size: 45}]}, [s.x, s.ms], fig);
    });
  }

  function logTail() {
    const pre = document.getElementById("log-tail");
    if (!pre || !window.EventSource) return;
    const state = document.getElementById("tail-state");
    const es = new EventSource(pre.dataset.src);
    es.onopen = function () { state.textContent = "live"; };
    es.onmessage = function (ev) {
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
      pre.appendChild(document.createTextNode(ev.data + "\n"));
      while (pre.childNodes.length > 500) pre.removeChild(pre.firstChild);
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    };
    es.addEventListener("end", function () { state.textContent = "ended"; es.close(); });
    es.onerror = function () { state.textContent = "reconnecting…"; };
    window.addEventListener("pagehide", function () { es.close(); });
  }

  /* While a rollback request is in flight, show the instances as they start, get ready and
     drain (the API answers the POST only when the rollout is done). */
  function rollbackProgress() {
    const live = document.getElementById("rollback-live");
    if (!live) return;
    let timer = null;
    const poll = function () {
      fetch(live.dataset.src, {headers: {"HX-Request": "true"}})
        .then(function (r) { return r.text(); })
        .then(function (html) {
          live.innerHTML = html;
          live.dataset.polled = String(parseInt(live.dataset.polled || "0", 10) + 1);
          localTimes(live);
        })
        .catch(function () {});
    };
    document.body.addEventListener("htmx:beforeRequest", function (ev) {
      if (ev.detail.target && ev.detail.target.id === "rollback-result" && !timer) {
        poll();
        timer = setInterval(poll, 700);
      }
    });
    document.body.addEventListener("htmx:afterRequest", function (ev) {
      if (ev.detail.target && ev.detail.target.id === "rollback-result" && timer) {
        clearInterval(timer);
        timer = null;
      }
    });
  }

  function autosubmit() {
    document.querySelectorAll("select[data-autosubmit]").forEach(function (sel) {
      sel.addEventListener("change", function () { sel.form.submit(); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    sparklines(document);
    autosubmit();
    appCharts();
    usageCharts();
    scatter();
    probeCharts();
    logTail();
    rollbackProgress();
    document.body.addEventListener("htmx:load", function (ev) {
      localTimes(ev.detail.elt);
      sparklines(ev.detail.elt);
    });
  });
  window.noopsConsole = {short: short};
})();
