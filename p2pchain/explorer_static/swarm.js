// p2pchain swarm map: nodes and links from the launcher's "state" events, block arrivals from
// its "block" events. Every text from the nodes is set with textContent.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const SLOW = 40;        // 1 ms of measured propagation is shown as 40 ms of animation
  const MAX_DELAY = 2500; // ... but a block's animation never lags its first arrival by more
  const LABELS_MAX = 40;  // nodes beyond this many are drawn without their names
  const BLOCKS_MAX = 12;
  const conn = document.getElementById("conn");
  const headline = document.getElementById("headline");
  const linksG = document.getElementById("links");
  const nodesG = document.getElementById("nodes");
  const pulsesG = document.getElementById("pulses");
  const table = document.getElementById("table");
  const blockList = document.getElementById("blocks");
  let state = { nodes: [], links: [] };
  let shapes = new Map();    // node index -> {g, body}
  const firstSeen = new Map(); // block hash -> browser time its first arrival was shown
  const pending = new Set();   // timers of arrivals still to be shown

  // A tip's colour: its last 24 bits as a hue (the first are zeros: proof of work). The tests
  // compute the same.
  function colour(tip) {
    if (!tip) return "hsl(0, 0%, 40%)";
    return "hsl(" + (parseInt(tip.slice(-6), 16) % 360) + ", 70%, 55%)";
  }

  // A node's radius: 30 for a small swarm, smaller as the ring fills (200 nodes: 5).
  function radius(n) { return n <= 12 ? 30 : Math.max(5, Math.min(30, Math.floor(1100 / n))); }

  function position(i, n) {
    if (n === 1) return [0, 0];
    const a = -Math.PI / 2 + (2 * Math.PI * i) / n;
    const r = n <= 12 ? 340 : 400;
    return [Math.round(r * Math.cos(a)), Math.round(r * Math.sin(a))];
  }

  function el(name, attrs) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  function draw() {
    const n = state.nodes.length;
    linksG.replaceChildren();
    for (const [a, b] of state.links) {
      if (a >= n || b >= n) continue;
      const [x1, y1] = position(a, n);
      const [x2, y2] = position(b, n);
      linksG.append(el("line", { class: "link", x1, y1, x2, y2, "data-a": a, "data-b": b }));
    }
    nodesG.replaceChildren();
    shapes = new Map();
    for (const node of state.nodes) {
      const [x, y] = position(node.index, n);
      const g = el("g", { class: "node" + (node.state === "DEAD" ? " dead" : ""), "data-index": node.index,
                          "data-tip": node.tip || "", transform: "translate(" + x + "," + y + ")" });
      const R = radius(n);
      const body = el("circle", { class: "body", r: R, fill: colour(node.tip) });
      const title = el("title");
      title.textContent = node.name + " " + node.state + " height " + node.height + " tip " + (node.tip || "-");
      body.append(title);
      let holder = g;
      if (node.explorer) {
        holder = el("a", { href: node.explorer, target: "_blank", rel: "noopener" });
        g.append(holder);
      }
      holder.append(body);
      if (node.mining) holder.append(el("circle", { class: "miner", r: R + 7 }));
      if (n <= LABELS_MAX) {
        const label = el("text", { y: R + 26 });
        label.textContent = node.name;
        const sub = el("text", { class: "sub", y: R + 44 });
        sub.textContent = node.height === null ? node.state : "h " + node.height;
        holder.append(label, sub);
      }
      nodesG.append(g);
      shapes.set(node.index, { g, body });
    }
    drawTable();
  }

  function drawTable() {
    const head = document.createElement("tr");
    for (const c of state.columns || []) {
      const th = document.createElement("th");
      th.textContent = c;
      head.append(th);
    }
    table.tHead.replaceChildren(head);
    const rows = [];
    for (const node of state.nodes) {
      const tr = document.createElement("tr");
      node.row.forEach((cell, i) => {
        const td = document.createElement("td");
        if (i === 0) {
          const sw = document.createElement("span");
          sw.className = "swatch";
          sw.style.background = colour(node.tip);
          td.append(sw);
          if (node.explorer) {
            const a = document.createElement("a");
            a.href = node.explorer;
            a.target = "_blank";
            a.rel = "noopener";
            a.textContent = cell;
            td.append(a);
          } else td.append(cell);
        } else td.textContent = cell;
        tr.append(td);
      });
      rows.push(tr);
    }
    table.tBodies[0].replaceChildren(...rows);
  }

  function pulse(index, hash) {
    const s = shapes.get(index);
    if (!s) return;
    s.body.setAttribute("fill", colour(hash));
    s.g.setAttribute("data-tip", hash);
    const [x, y] = position(index, state.nodes.length);
    const ring = el("circle", { class: "pulse", cx: x, cy: y, r: radius(state.nodes.length), stroke: colour(hash) });
    ring.addEventListener("animationend", () => ring.remove());
    pulsesG.append(ring);
  }

  function onBlock(d) {
    const now = performance.now();
    if (!firstSeen.has(d.hash)) {
      firstSeen.set(d.hash, now);
      const li = document.createElement("li");
      li.textContent = "block " + d.height + " " + d.hash.slice(0, 16);
      li.style.color = colour(d.hash);
      blockList.prepend(li);
      while (blockList.children.length > BLOCKS_MAX) blockList.lastElementChild.remove();
      if (firstSeen.size > 500) firstSeen.delete(firstSeen.keys().next().value);
    }
    const due = firstSeen.get(d.hash) + Math.min(d.ms * SLOW, MAX_DELAY);
    const timer = setTimeout(() => { pending.delete(timer); pulse(d.node, d.hash); }, Math.max(0, due - now));
    pending.add(timer);
  }

  function onState(d) {
    if (d.final) {  // the view the launcher's summary was made from: nothing older may repaint it
      for (const timer of pending) clearTimeout(timer);
      pending.clear();
    }
    state = d;
    headline.textContent = d.headline;
    draw();
    if (d.final) {
      conn.textContent = "run ended";
      conn.className = "conn ended";
      document.body.dataset.final = "true";
      source.close();
    }
  }

  const source = new EventSource("/events");
  source.addEventListener("open", () => { conn.textContent = "live"; conn.className = "conn live"; });
  source.addEventListener("error", () => {
    if (document.body.dataset.final) return;
    conn.textContent = "reconnecting…";
    conn.className = "conn down";
  });
  source.addEventListener("state", (e) => onState(JSON.parse(e.data)));
  source.addEventListener("block", (e) => onBlock(JSON.parse(e.data)));
})();
