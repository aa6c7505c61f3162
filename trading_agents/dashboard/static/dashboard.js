// Draws the charts whose plotly specs the page embeds, and keeps an account page live through
// server-sent events (an account, or a backtest while it runs): new decision rows are prepended and the figures updated, with no reload.
(function () {
  "use strict";
  function draw(id) {
    var spec = document.getElementById(id + "-spec");
    var el = document.getElementById(id);
    if (!spec || !el || !window.Plotly) return;
    var fig = JSON.parse(spec.textContent);
    Plotly.newPlot(el, fig.data, fig.layout, { responsive: true, displaylogo: false });
  }
  ["equity-chart", "drawdown-chart", "distribution-chart"].forEach(draw);

  var live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  var after = live.dataset.after;
  if (after === "-1") { setText("live-status", "older page: not live"); return; }
  var base = live.dataset.events || "/accounts/" + encodeURIComponent(live.dataset.run) + "/events";
  var source = new EventSource(base + "?after=" + after + "&steps=" + live.dataset.steps);
  source.addEventListener("done", function (event) {
    source.close();
    setText("live-status", JSON.parse(event.data).message);
  });
  source.onopen = function () { setText("live-status", "live"); };
  source.onerror = function () { setText("live-status", "reconnecting"); };
  source.addEventListener("step", function (event) {
    var update = JSON.parse(event.data);
    if (update.rows_html && update.rows_html.trim()) {
      var body = document.querySelector("#decisions tbody");
      var holder = document.createElement("tbody");
      holder.innerHTML = update.rows_html;
      var rows = Array.prototype.slice.call(holder.children);
      rows.reverse().forEach(function (row) { row.classList.add("new"); body.insertBefore(row, body.firstChild); });
      var msg = document.getElementById("message");
      if (msg) msg.remove();
    }
    var a = update.account;
    if (a) {
      setText("equity", money(a.equity));
      setText("cash", money(a.cash));
      setText("last-bar", a.last_bar || "-");
      var state = document.getElementById("risk-state");
      if (state) { state.textContent = a.risk_state; state.className = "state " + a.risk_state; }
      setText("halt-reason", a.halt_reason || "");
    }
    var chart = document.getElementById("equity-chart");
    if (update.points && update.points.length && chart && chart.data) {
      Plotly.extendTraces(chart, {
        x: [update.points.map(function (p) { return p.x; })],
        y: [update.points.map(function (p) { return p.y; })]
      }, [0]);
    }
    document.dispatchEvent(new CustomEvent("dashboard:step", { detail: update }));
  });
  function setText(id, text) { var el = document.getElementById(id); if (el) el.textContent = text; }
  function money(v) {
    return v === null || v === undefined ? "-" : v.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }
})();
