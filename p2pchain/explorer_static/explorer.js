// p2pchain explorer: live updates over Server-Sent Events. The page works without this script;
// with it, every tip, reorganisation or (on pages that list them) new transactions the node reports
// refreshes the page's live part from the server, without a reload. Text from the node is only
// ever set with textContent, never parsed as HTML, except the server's own escaped page.
"use strict";
(function () {
  const body = document.body;
  const wants = new Set((body.dataset.live || "tip").split(" "));
  const conn = document.getElementById("conn");
  const feed = document.getElementById("feed");
  const banner = document.getElementById("banner");
  const FEED_MAX = 12;
  const RETRY_CLOSED_MS = 5000; // after a refused stream (the node's Retry-After)
  const TX_REFRESH_MS = 2000; // a flood of transactions refreshes a page at most this often
  let fetching = false;
  let again = false;

  function setConn(text, cls) {
    conn.textContent = text;
    conn.className = "conn " + cls;
  }

  function note(cls, text) {
    if (feed.firstElementChild && feed.firstElementChild.classList.contains("muted")) feed.textContent = "";
    const li = document.createElement("li");
    li.className = cls;
    li.textContent = new Date().toLocaleTimeString() + " " + text;
    feed.prepend(li);
    while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  }

  function keys(root) {
    return new Set(Array.from(root.querySelectorAll("[data-key]"), (el) => el.dataset.key));
  }

  // Fetch this page again and swap in its live part; one fetch at a time, the latest wins.
  async function refresh() {
    if (fetching) { again = true; return; }
    fetching = true;
    try {
      const resp = await fetch(location.href, { headers: { Accept: "text/html" }, cache: "no-store" });
      if (resp.ok || resp.status === 404) {
        const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
        const fresh = doc.getElementById("live");
        const live = document.getElementById("live");
        if (fresh && live) {
          const before = keys(live);
          const node = document.importNode(fresh, true);
          for (const row of node.querySelectorAll("tr[data-key]")) {
            if (before.size && !before.has(row.dataset.key)) row.classList.add("fresh");
          }
          live.replaceWith(node);
          body.dataset.tip = doc.body.dataset.tip || body.dataset.tip;
        }
      }
    } catch (err) {
      setConn("node unreachable", "down");
    } finally {
      fetching = false;
      if (again) { again = false; refresh(); }
    }
  }

  // Transactions may come thousands a second: refresh for them at most every TX_REFRESH_MS, so
  // that each open page costs the node at most one render in that time (tips refresh at once).
  let txTimer = null;
  let txRefreshed = -Infinity;
  function refreshForTx() {
    if (txTimer !== null) return;
    const wait = Math.max(0, txRefreshed + TX_REFRESH_MS - performance.now());
    txTimer = setTimeout(() => { txTimer = null; txRefreshed = performance.now(); refresh(); }, wait);
  }

  // Ages ("12 s") keep counting between refreshes: a tip that stops moving shows it at a glance.
  function ageText(ms) {
    const s = Math.max(0, Math.floor((Date.now() - ms) / 1000));
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60]]) {
      if (s >= size) return Math.floor(s / size) + " " + unit;
    }
    return s + " s";
  }
  setInterval(() => {
    for (const el of document.querySelectorAll(".age[data-ms]")) el.textContent = ageText(Number(el.dataset.ms));
  }, 1000);

  function short(hash) { return String(hash).slice(0, 16) + "…"; }

  if (!window.EventSource) return;
  if (feed.firstElementChild && feed.firstElementChild.classList.contains("muted")) {
    feed.firstElementChild.textContent = "new blocks, reorganisations and transactions appear here";
  }
  // One stream per visible tab: a hidden tab closes its stream (browsers allow about six
  // connections to one host) and opens a new one when shown again, catching up on its hello.
  let source = null;
  let hellos = 0;
  function connect() {
    source = new EventSource(body.dataset.events);
    source.addEventListener("open", () => setConn("live", "live"));
    source.addEventListener("error", () => {
      if (source && source.readyState === EventSource.CLOSED) {
        // An answer that is not a stream (503: every slot taken) ends EventSource for good: retry.
        source = null;
        setConn("node busy: retrying", "down");
        setTimeout(() => { if (!document.hidden && !source) connect(); }, RETRY_CLOSED_MS);
      } else {
        setConn("reconnecting…", "down");
      }
    });
    source.addEventListener("hello", (e) => {
      const d = JSON.parse(e.data);
      setConn("live", "live");
      // A reconnection may have missed events: catch up (the first hello only if the tip moved).
      if (hellos++ > 0 || d.hash !== body.dataset.tip) refresh();
    });
    source.addEventListener("tip", (e) => {
      const d = JSON.parse(e.data);
      note("tip", "block " + d.height + " " + short(d.hash) + " (" + d.txs + " tx)");
      if (wants.has("tip")) refresh();
    });
    source.addEventListener("reorg", (e) => {
      const d = JSON.parse(e.data);
      const gone = d.disconnected.length;
      const text = "Reorganisation: " + gone + " block(s) above height " + d.fork_height +
        " replaced by " + d.connected.length + " from another branch";
      banner.textContent = text;
      banner.hidden = false;
      note("reorg", text);
      refresh();
    });
    source.addEventListener("txs", (e) => {
      const d = JSON.parse(e.data);
      const last = d.txs[d.txs.length - 1];
      const more = d.count > 1 ? " and " + (d.count - 1) + " more" : "";
      note("tx", "tx " + short(last.txid) + " " + last.amount + " coin(s)" + more);
      if (wants.has("tx")) refreshForTx();
    });
  }
  document.addEventListener("visibilitychange", () => {
    if (document.hidden && source) {
      source.close();
      source = null;
      setConn("paused (tab hidden)", "");
    } else if (!document.hidden && !source) {
      connect();
    }
  });
  connect();
})();
