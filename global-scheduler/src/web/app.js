// The status page's script: fetches the JSON view every two seconds and
// renders it. Every string from the server goes into the page as text
// (textContent / text nodes), never as HTML, so a job named or running
// `<script>` is shown, not run.
"use strict";
(function () {
  var REFRESH_MS = 2000;
  var main = document.getElementById("main");
  var banner = document.getElementById("banner");
  var updated = document.getElementById("updated");
  var who = document.getElementById("who");

  // An element with attributes and children (strings become text nodes).
  function el(tag, attrs) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "class") e.className = attrs[k];
      else e.setAttribute(k, attrs[k]);
    });
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined) continue;
      e.append(typeof c === "object" ? c : String(c));
    }
    return e;
  }

  function table(headers, rows) {
    var head = el("tr", {});
    headers.forEach(function (h) { head.append(el("th", {}, h)); });
    var t = el("table", {}, el("thead", {}, head));
    var body = el("tbody", {});
    rows.forEach(function (cells) {
      var tr = el("tr", {});
      cells.forEach(function (c) { tr.append(el("td", {}, c)); });
      body.append(tr);
    });
    t.append(body);
    return t;
  }

  function state(s) { return el("span", { class: "state " + s }, s); }

  function bar(u) {
    var fill = el("div", { class: "fill" + (u.permille >= 1000 ? " full" : u.permille >= 800 ? " high" : "") });
    fill.style.width = (u.permille / 10) + "%";
    return el("div", {}, el("div", { class: "bar", title: u.text }, fill), el("span", { class: "bar-text" }, u.text));
  }

  function counts(list) {
    return list.map(function (c) { return c.count + " " + c.state; }).join(", ");
  }

  function jobLink(name) {
    return el("a", { href: "/job/" + encodeURIComponent(name) }, name);
  }

  function time(ms) {
    return ms > 0 ? new Date(ms).toLocaleString() : "-";
  }

  function standby(s) {
    banner.hidden = s.leader;
    banner.textContent = "";
    if (s.leader) return;
    banner.append("This replica is a standby: it does not schedule, and the live view is the leader's. ");
    if (/^https?:\/\//.test(s.leader_url)) {
      banner.append("The leader is ", el("a", { href: s.leader_url }, s.leader_url), ".");
    } else {
      banner.append("No leader is known yet.");
    }
  }

  function overview(s) {
    var out = [];
    if (!s.leader) return out;
    out.push(el("h2", {}, "Jobs"));
    var cards = el("div", { class: "cards" });
    s.job_states.forEach(function (c) {
      cards.append(el("div", { class: "card" }, el("span", { class: "n" }, c.count), c.state));
    });
    out.push(cards);
    if (s.task_states.length) out.push(el("p", { class: "muted" }, "Tasks: " + counts(s.task_states)));

    out.push(el("h2", {}, "Clusters"));
    out.push(s.clusters.length ? table(
      ["Cluster", "Location", "State", "Machines", "CPU", "Memory", "Queue"],
      s.clusters.map(function (c) {
        return [el("strong", {}, c.name), c.location, state(c.up ? "up" : "down"), c.machines, bar(c.cpu), bar(c.memory), c.queue_len];
      })) : el("p", { class: "muted" }, "No cluster has registered yet."));

    out.push(el("h2", {}, "Recent jobs"));
    out.push(s.jobs.length ? table(
      ["Job", "Tenant", "State", "Tasks", "By state", "Why pending", "Command", "Submitted"],
      s.jobs.map(function (j) {
        return [jobLink(j.name), j.tenant, state(j.state), j.tasks, counts(j.counts),
          el("span", { class: "reason" }, j.reason), el("code", {}, j.command), time(j.submitted_unix_ms)];
      })) : el("p", { class: "muted" }, "No jobs yet."));
    if (s.jobs_not_listed > 0) out.push(el("p", { class: "muted" }, s.jobs_not_listed + " older job(s) not listed."));
    return out;
  }

  function jobPage(d) {
    var j = d.job;
    var out = [el("h2", {}, "Job ", el("strong", {}, j.name), " ", state(j.state))];
    out.push(table(["Tenant", "Tasks", "By state", "Locality", "Command", "Submitted"],
      [[j.tenant, j.tasks, counts(j.counts), j.locality || "-", el("code", {}, j.command), time(j.submitted_unix_ms)]]));
    if (d.reasons.length) {
      out.push(el("h2", {}, "Why"));
      var ul = el("ul", { class: "reasons" });
      d.reasons.forEach(function (r) { ul.append(el("li", {}, r)); });
      out.push(ul);
    }
    out.push(el("h2", {}, "Tasks"));
    out.push(table(["#", "State", "Cluster", "Machine", "Attempts", "Exit", "Reason"],
      d.tasks.map(function (t) {
        return [t.index, state(t.state), t.cluster || "-", t.machine || "-", t.attempts,
          t.exit_code === null ? "-" : t.exit_code, t.reason];
      })));
    return out;
  }

  var jobName = null;
  var m = /^\/job\/([^/]+)$/.exec(location.pathname);
  if (m) jobName = decodeURIComponent(m[1]);

  function render(nodes) {
    main.textContent = "";
    nodes.forEach(function (n) { main.append(n); });
  }

  function refresh() {
    var status = fetch("/api/status", { credentials: "same-origin" });
    var detail = jobName === null ? null :
      fetch("/api/jobs/" + encodeURIComponent(jobName), { credentials: "same-origin" });
    Promise.all([status, detail]).then(function (rs) {
      if (rs[0].status === 401) { location.href = "/login"; return null; }
      return Promise.all([rs[0].json(), rs[1] ? rs[1].json().then(function (b) { return { ok: rs[1].ok, body: b }; }) : null]);
    }).then(function (got) {
      if (!got) return;
      var s = got[0];
      standby(s);
      who.textContent = "signed in as " + s.user + " · policy: " + s.policy_source;
      if (jobName === null) render(overview(s));
      else if (got[1].ok) render(jobPage(got[1].body));
      else if (s.leader) render([el("p", { class: "error" }, got[1].body.error)]);
      else render([]);
      updated.textContent = "updated " + new Date().toLocaleTimeString();
    }).catch(function (e) {
      updated.textContent = "cannot reach the scheduler (" + e + "); retrying";
    }).finally(function () {
      setTimeout(refresh, REFRESH_MS);
    });
  }
  refresh();
})();
