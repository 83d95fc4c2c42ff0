// The runs page, updated while you watch: the live list is fetched from runs.json every two seconds and
// written with textContent only (never as markup). Without JavaScript, reloading the page does the same.
"use strict";
(function () {
  const body = document.querySelector("#live tbody");
  if (!body) return;
  function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }
  function link(href, text, cls) {
    const a = document.createElement("a"); a.href = href; a.textContent = text; if (cls) a.className = cls; return a;
  }
  async function refresh() {
    try {
      const answer = await fetch("/console/runs.json", { credentials: "same-origin", cache: "no-store" });
      if (!answer.ok) return;
      const runs = (await answer.json()).runs;
      const rows = runs.map(function (r) {
        const tr = document.createElement("tr");
        tr.dataset.run = r.run_id;
        const id = document.createElement("td");
        id.appendChild(link("/console/run?id=" + encodeURIComponent(r.run_id), r.run_id));
        tr.appendChild(id);
        tr.appendChild(cell(r.handle));
        tr.appendChild(cell(r.room_name));
        const state = cell(r.state); state.className = "state"; tr.appendChild(state);
        const stop = document.createElement("td");
        stop.appendChild(link("/console/runs/stop?run=" + encodeURIComponent(r.run_id) + "&agent=" +
          encodeURIComponent(r.handle), "Stop…", "stop"));
        tr.appendChild(stop);
        return tr;
      });
      body.replaceChildren.apply(body, rows);
    } catch (e) { /* the hub is restarting: try again next tick */ }
  }
  setInterval(refresh, 2000);
})();
