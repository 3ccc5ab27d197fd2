// The admin console: the pool and its users, the repository library and everyone's personal
// access tokens. One page for two places: /-/admin on the public listener, where the session
// cookie signs an administrator in, and /console on the admin listener, where every request
// carries the operator token. Plain JavaScript, no build step.
(function () {
  "use strict";

  var PUBLIC = location.pathname.startsWith("/-/");
  var BASE = PUBLIC ? "/-/api/admin" : "";
  var TOKEN_KEY = "chamberlain-admin-token";
  var STATS_EVERY = 5000;
  var LISTS_EVERY = 30000;
  var RUNNING = ["queued", "starting", "ready", "stopping"];

  var memoryToken = ""; // when sessionStorage is refused (some private modes)
  var locked = false; // the token form is showing: nothing to poll
  var timers = [];
  var pending = new Set(); // users with a stop or restart under way
  var pollErrors = {};

  function $(id) { return document.getElementById(id); }

  function el(tag, className, text) {
    var e = document.createElement(tag);
    if (className) { e.className = className; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }

  function button(className, text, label) {
    var b = el("button", className, text);
    b.type = "button";
    b.setAttribute("aria-label", label);
    return b;
  }

  // Replaces a node's content; strings become text, never markup.
  function put(node) {
    node.textContent = "";
    for (var i = 1; i < arguments.length; i += 1) { node.append(arguments[i]); }
  }

  function say(text, isError) {
    $("status").textContent = text;
    $("status").classList.toggle("error", !!isError);
  }

  // ---- formatting ------------------------------------------------------------------------
  function count(n) { return Number(n || 0).toLocaleString("en"); }

  function plural(n, word) { return count(n) + " " + word + (n === 1 ? "" : "s"); }

  function bytes(n) {
    if (n === null || n === undefined) { return "—"; }
    var units = ["B", "kB", "MB", "GB", "TB", "PB"], i = 0, v = n;
    while (v >= 999.95 && i < units.length - 1) { v /= 1000; i += 1; }
    return (i === 0 ? v : v.toFixed(1)) + "\u00a0" + units[i]; // no break inside "1.2 GB"
  }

  // "3 min ago", "in 29 days".
  function relative(ms) {
    var diff = ms - Date.now(), s = Math.round(Math.abs(diff) / 1000), text;
    if (s < 10) { return "just now"; }
    if (s < 60) { text = s + " s"; }
    else if (s < 3600) { text = Math.round(s / 60) + " min"; }
    else if (s < 86400) { text = Math.round(s / 3600) + " h"; }
    else { text = plural(Math.round(s / 86400), "day"); }
    return diff < 0 ? text + " ago" : "in " + text;
  }

  // A relative time, with the exact RFC 3339 time on hover. Takes the server's RFC 3339
  // string when it sent one, else milliseconds since the epoch.
  function moment(iso, ms) {
    var date = iso ? new Date(iso) : new Date(ms || 0);
    if ((!iso && !ms) || isNaN(date.getTime())) { return iso || "—"; }
    var exact = iso || date.toISOString();
    var t = el("time", "", relative(date.getTime()));
    t.dateTime = exact;
    t.title = exact;
    return t;
  }

  function errorOf(r) {
    return (r.data && typeof r.data.error === "string" && r.data.error) ||
      "the gateway answered " + r.status;
  }

  // ---- requests --------------------------------------------------------------------------
  function storedToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return memoryToken; }
  }

  function storeToken(value) {
    memoryToken = value;
    try {
      if (value) { sessionStorage.setItem(TOKEN_KEY, value); } else { sessionStorage.removeItem(TOKEN_KEY); }
    } catch (e) { /* kept in memory only */ }
  }

  // Always resolves to {ok, status, data}, so a failed poll is a message and never a throw.
  function api(method, path, body) {
    var init = { method: method, credentials: "same-origin", headers: { "accept": "application/json" } };
    if (!PUBLIC) {
      var token = storedToken();
      if (!token) {
        askToken();
        return Promise.resolve({ ok: false, status: 401, data: { error: "the operator token is needed" } });
      }
      init.headers["authorization"] = "Bearer " + token;
    }
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(BASE + path, init).then(function (resp) {
      if (resp.status === 401) { unauthorised(); }
      return resp.json().catch(function () { return {}; }).then(function (data) {
        return { ok: resp.ok, status: resp.status, data: data || {} };
      });
    }, function (e) {
      return { ok: false, status: 0, data: { error: "the gateway did not answer (" + e.message + ")" } };
    });
  }

  function unauthorised() {
    if (PUBLIC) {
      window.location.href = "/-/login?next=" + encodeURIComponent("/-/admin");
      return;
    }
    storeToken("");
    askToken();
  }

  // One request at a time per loader; a call while one runs asks for another afterwards, so
  // the refresh after an action is never lost behind a slow poll.
  function serial(load) {
    var running = false, again = false;
    function run() {
      if (running) { again = true; return; }
      running = true;
      Promise.resolve().then(load).catch(function (e) { say("The page failed: " + e.message, true); })
        .then(function () {
          running = false;
          if (again) { again = false; run(); }
        });
    }
    return run;
  }

  // A poll's outcome: its error replaces the status, and its next success clears that error
  // (but not a message something else wrote since).
  function polled(r, what) {
    if (r.ok) {
      if (pollErrors[what] && $("status").textContent === pollErrors[what]) { say(""); }
      pollErrors[what] = "";
      return true;
    }
    pollErrors[what] = "Could not load " + what + ": " + errorOf(r) + ".";
    say(pollErrors[what], true);
    return false;
  }

  // ---- keyed lists -----------------------------------------------------------------------
  // Updates rows in place, keyed by a data attribute, so a refresh keeps focus, a half-done
  // two-step button and disabled buttons. While the pointer or focus is in the list nothing
  // is reordered, so no row moves under a click.
  function sync(parent, attr, items, keyOf, make, fill) {
    var old = new Map();
    Array.prototype.forEach.call(parent.children, function (node) {
      old.set(node.getAttribute("data-" + attr), node);
    });
    var hold = parent.matches(":hover") || parent.contains(document.activeElement);
    var nodes = items.map(function (item) {
      var key = String(keyOf(item));
      var node = old.get(key);
      if (!node) {
        node = make(item);
        node.setAttribute("data-" + attr, key);
      }
      old.delete(key);
      fill(node, item);
      return node;
    });
    old.forEach(function (node) { node.remove(); });
    nodes.forEach(function (node, i) {
      if (hold) {
        if (!node.parentNode) { parent.appendChild(node); }
      } else if (parent.children[i] !== node) {
        parent.insertBefore(node, parent.children[i] || null);
      }
    });
  }

  // A table row with one cell per column; each cell carries its column's name for the
  // stacked layout on phones.
  function tableRow(table) {
    var tr = el("tr");
    tr.setAttribute("role", "row");
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      var cell = el(i === 0 ? "th" : "td", th.className);
      if (i === 0) { cell.scope = "row"; }
      cell.setAttribute("role", i === 0 ? "rowheader" : "cell");
      cell.dataset.label = th.textContent.trim();
      tr.appendChild(cell);
    });
    tr.lastChild.classList.add("cell-actions");
    return tr;
  }

  // Destructive actions take two clicks, the second within 5 s, instead of a modal confirm().
  function twoStep(b, text, name, run) {
    var timer = 0;
    function show(label) {
      b.textContent = label;
      b.setAttribute("aria-label", label + " " + name);
    }
    function reset() {
      clearTimeout(timer);
      b.classList.remove("confirm");
      show(text);
    }
    b.addEventListener("click", function () {
      if (!b.classList.contains("confirm")) {
        b.classList.add("confirm");
        show("Confirm " + text.toLowerCase());
        timer = setTimeout(reset, 5000);
        return;
      }
      reset();
      run();
    });
  }

  // ---- gateway and users -----------------------------------------------------------------
  function fact(dl, term, value, title) {
    var dd = el("dd", "", value);
    if (title) { dd.title = title; }
    dl.appendChild(el("dt", "", term));
    dl.appendChild(dd);
  }

  // The mode says most; the whole object is there on hover.
  function isolation(iso) {
    if (!iso) { return "—"; }
    return iso.mode !== undefined && iso.mode !== null ? String(iso.mode) : JSON.stringify(iso);
  }

  function renderGateway(s) {
    var dl = $("gateway-figures");
    dl.textContent = "";
    var states = Object.keys(s.byState || {}).filter(function (k) { return s.byState[k]; })
      .map(function (k) { return s.byState[k] + " " + k; });
    fact(dl, "Instances", count(s.instances) + " / " + count(s.maxInstances) +
      (states.length ? " (" + states.join(", ") + ")" : ""));
    fact(dl, "Starts waiting", count(s.startsWaiting) + " (" + count(s.maxConcurrentStarts) + " at a time)");
    fact(dl, "Isolation", isolation(s.isolation), s.isolation ? JSON.stringify(s.isolation) : "");
    fact(dl, "Sign-in", s.auth ? s.auth.mode + " · " + plural(s.auth.cachedTokens || 0, "cached token") : "—");
    fact(dl, "OpenCode", s.opencodeVersion || "unknown");
    fact(dl, "Gateway", s.version || "—");
    fact(dl, "Model budget", s.llmDailyTokens ? count(s.llmDailyTokens) + " tokens a user a day" : "none");
    if (s.diskQuota) { fact(dl, "Disk quota", bytes(s.diskQuota) + " a user"); }
    if (s.hostOomKills !== null && s.hostOomKills !== undefined) {
      fact(dl, "Host OOM kills", count(s.hostOomKills));
    }
  }

  function stateView(u) {
    var state = u.state || "stopped";
    var text = state.charAt(0).toUpperCase() + state.slice(1);
    if (u.busySessions > 0) { text += " — agent working"; }
    var line = el("span", "state-line");
    line.append(el("span", "dot " + state), text);
    line.firstChild.setAttribute("aria-hidden", "true");
    var parts = [line];
    if (u.message) { parts.push(el("div", "meta", u.message)); }
    return parts;
  }

  function memory(u) {
    var parts = [bytes(u.rssBytes)];
    if (u.oomKills) { parts.push(el("div", "meta", plural(u.oomKills, "OOM kill"))); }
    return parts;
  }

  // Today's model use through the relay. The gateway passes on the relay's record
  // ({requests, inputTokens, outputTokens, costUsd?}); {input, output, calls} is read too.
  function usage(llm) {
    if (!llm) { return "—"; }
    var input = llm.input !== undefined ? llm.input : llm.inputTokens || 0;
    var output = llm.output !== undefined ? llm.output : llm.outputTokens || 0;
    var calls = llm.calls !== undefined ? llm.calls : llm.requests || 0;
    if (!input && !output && !calls) { return "—"; }
    var span = el("span", "", count(input + output) + " tokens · " + plural(calls, "call") +
      (typeof llm.costUsd === "number" ? " · $" + llm.costUsd.toFixed(2) : ""));
    span.title = count(input) + " in, " + count(output) + " out";
    return span;
  }

  function makeUser(u) {
    var tr = tableRow($("users"));
    var user = u.userId;
    var stop = button("stop", "Stop", "Stop " + user);
    var restart = button("restart", "Restart", "Restart " + user);
    stop.addEventListener("click", function () { act(tr, user, "stop"); });
    restart.addEventListener("click", function () { act(tr, user, "restart"); });
    tr.lastChild.append(stop, restart);
    return tr;
  }

  function fillUser(tr, u) {
    var c = tr.cells;
    put(c[0], u.userId);
    put.apply(null, [c[1]].concat(stateView(u)));
    put(c[2], moment(u.lastActivityTime, u.lastActivity));
    put(c[3], moment(u.startedAtTime, u.startedAt));
    put(c[4], count(u.restarts));
    put(c[5], u.uid === null || u.uid === undefined ? "—" : String(u.uid));
    put.apply(null, [c[6]].concat(memory(u)));
    put(c[7], bytes(u.diskBytes));
    put(c[8], usage(u.llm));
    var busy = pending.has(u.userId);
    tr.querySelector("button.stop").disabled = busy || u.state === "stopped";
    tr.querySelector("button.restart").disabled = busy;
  }

  function running(u) { return RUNNING.indexOf(u.state) >= 0 ? 0 : 1; }

  function byRunningThenActivity(a, b) {
    return running(a) - running(b) || (b.lastActivity || 0) - (a.lastActivity || 0) ||
      (a.userId < b.userId ? -1 : 1);
  }

  function renderUsers(users) {
    users = users.slice().sort(byRunningThenActivity);
    $("users-empty").hidden = users.length > 0;
    $("users").hidden = users.length === 0;
    sync($("users").tBodies[0], "user", users, function (u) { return u.userId; }, makeUser, fillUser);
  }

  var loadStats = serial(function () {
    return api("GET", "/stats").then(function (r) {
      if (!polled(r, "statistics")) { return; }
      renderGateway(r.data);
      renderUsers(r.data.users || []);
    });
  });

  function act(tr, user, verb) {
    var buttons = tr.querySelectorAll("button");
    pending.add(user);
    buttons.forEach(function (b) { b.disabled = true; });
    say((verb === "stop" ? "Stopping " : "Restarting ") + user + "…");
    api("POST", "/instances/" + encodeURIComponent(user) + "/" + verb).then(function (r) {
      pending.delete(user);
      // The refresh below disables Stop again if the instance is stopped.
      buttons.forEach(function (b) { b.disabled = false; });
      if (r.ok) {
        say((verb === "stop" ? "Stopped " : "Restarted ") + user + ".");
      } else {
        say("Could not " + verb + " " + user + ": " + errorOf(r) + ".", true);
      }
      refreshAll();
    });
  }

  // ---- repository library ----------------------------------------------------------------
  function makeRepo(repo) {
    var li = el("li", "repo");
    var name = repo.name;
    var actions = el("div", "row-actions");
    var refresh = button("refresh", "Refresh", "Refresh " + name);
    var del = button("delete", "Delete", "Delete " + name);
    refresh.addEventListener("click", function () { refreshRepo(name, refresh); });
    twoStep(del, "Delete", name, function () { deleteRepo(name, del); });
    actions.append(refresh, del);
    li.append(el("div", "info"), actions);
    return li;
  }

  function fillRepo(li, repo) {
    var meta = el("div", "meta");
    meta.append(repo.sizeBytes === null || repo.sizeBytes === undefined ? "size…" : bytes(repo.sizeBytes),
      " · changed ", moment(null, repo.lastModified));
    var parts = [
      el("span", "repo-name", repo.name),
      el("span", "badge", repo.kind + (repo.defaultBranch ? " · " + repo.defaultBranch : ""))
    ];
    if (repo.description) { parts.push(el("div", "description", repo.description)); }
    parts.push(meta, el("code", "path", repo.path || ""));
    put.apply(null, [li.firstChild].concat(parts));
  }

  var loadRepos = serial(function () {
    return api("GET", "/repos").then(function (r) {
      if (!polled(r, "repositories")) { return; }
      var repos = Array.isArray(r.data) ? r.data : [];
      $("repos-empty").hidden = repos.length > 0;
      sync($("repos"), "repo", repos, function (x) { return x.name; }, makeRepo, fillRepo);
    });
  });

  function refreshRepo(name, b) {
    b.disabled = true;
    say("Refreshing " + name + "…");
    api("POST", "/repos/" + encodeURIComponent(name) + "/refresh").then(function (r) {
      b.disabled = false;
      say(r.ok ? "Refreshed " + name + "." : "Could not refresh " + name + ": " + errorOf(r) + ".", !r.ok);
      refreshAll();
    });
  }

  function deleteRepo(name, b) {
    b.disabled = true;
    api("DELETE", "/repos/" + encodeURIComponent(name)).then(function (r) {
      b.disabled = false;
      say(r.ok ? "Deleted " + name + "." : "Could not delete " + name + ": " + errorOf(r) + ".", !r.ok);
      refreshAll();
    });
  }

  function setAdding(on) {
    var form = $("repo-add-form");
    Array.prototype.forEach.call(form.elements, function (e) { e.disabled = on; });
    form.setAttribute("aria-busy", on ? "true" : "false");
    $("repo-add-submit").textContent = on ? "Adding…" : "Add repository";
  }

  $("repo-add-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var name = $("repo-name").value.trim();
    var url = $("repo-url").value.trim();
    var description = $("repo-description").value.trim();
    if (!name || !url) {
      say("A repository needs a name and a source.", true);
      return;
    }
    var body = { name: name, url: url };
    if (description) { body.description = description; }
    setAdding(true);
    say("Adding " + name + "… (a clone can take a while)");
    api("POST", "/repos", body).then(function (r) {
      setAdding(false);
      if (r.ok) {
        $("repo-add-form").reset();
        say("Added " + name + ".");
      } else {
        say("Could not add " + name + ": " + errorOf(r) + ".", true);
      }
      // Disabling the form took the focus away; give it back where typing goes on.
      if (document.activeElement === document.body) { $("repo-name").focus(); }
      refreshAll();
    });
  });

  // ---- personal access tokens ------------------------------------------------------------
  function makeToken(t) {
    var tr = tableRow($("tokens"));
    var id = t.id;
    var revoke = button("revoke", "Revoke", "Revoke " + t.name);
    twoStep(revoke, "Revoke", t.name, function () { revokeToken(id, t, revoke); });
    tr.lastChild.appendChild(revoke);
    return tr;
  }

  function expires(iso) {
    if (!(new Date(iso).getTime() < Date.now())) { return moment(iso); }
    var span = el("span", "muted", "expired ");
    span.append(moment(iso));
    return span;
  }

  function fillToken(tr, t) {
    var c = tr.cells;
    put(c[0], t.name);
    put(c[1], t.userId);
    put(c[2], moment(t.createdAt));
    put(c[3], expires(t.expiresAt));
  }

  var loadTokens = serial(function () {
    return api("GET", "/tokens").then(function (r) {
      if (!polled(r, "tokens")) { return; }
      var tokens = (Array.isArray(r.data) ? r.data : []).slice().sort(function (a, b) {
        return (b.createdAt || "") < (a.createdAt || "") ? -1 : 1;
      });
      $("tokens-empty").hidden = tokens.length > 0;
      $("tokens").hidden = tokens.length === 0;
      sync($("tokens").tBodies[0], "token", tokens, function (t) { return t.id; }, makeToken, fillToken);
    });
  });

  function revokeToken(id, t, b) {
    b.disabled = true;
    api("DELETE", "/tokens/" + encodeURIComponent(id)).then(function (r) {
      b.disabled = false;
      var what = "token “" + t.name + "” of " + t.userId;
      say(r.ok ? "Revoked " + what + "." : "Could not revoke " + what + ": " + errorOf(r) + ".", !r.ok);
      refreshAll();
    });
  }

  // ---- polling and signing in ------------------------------------------------------------
  function refreshAll() {
    loadStats();
    loadRepos();
    loadTokens();
  }

  function stopPolling() {
    timers.forEach(clearInterval);
    timers = [];
  }

  function startPolling() {
    stopPolling();
    if (locked || document.hidden) { return; }
    timers = [
      setInterval(loadStats, STATS_EVERY),
      setInterval(function () { loadRepos(); loadTokens(); }, LISTS_EVERY)
    ];
  }

  // A hidden tab polls nothing; coming back refreshes at once.
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      stopPolling();
    } else if (!locked) {
      refreshAll();
      startPolling();
    }
  });

  function askToken() {
    var first = !locked;
    locked = true;
    stopPolling();
    $("console").hidden = true;
    $("forget-token").hidden = true;
    $("admin-token-form").hidden = false;
    if (first) { $("admin-token").focus(); }
  }

  function showConsole() {
    locked = false;
    $("admin-token-form").hidden = true;
    $("console").hidden = false;
    $("forget-token").hidden = PUBLIC;
    refreshAll();
    startPolling();
  }

  $("admin-token-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var value = $("admin-token").value.trim();
    if (!value) {
      say("Enter the operator token.", true);
      return;
    }
    storeToken(value);
    $("admin-token").value = "";
    say("");
    showConsole();
  });

  $("forget-token").addEventListener("click", function () {
    storeToken("");
    askToken();
    say("The operator token is forgotten in this tab.");
  });

  // The admin listener has no portal and no session to end.
  if (PUBLIC) {
    $("public-links").hidden = false;
  } else {
    $("brand").replaceWith(el("span", "brand", $("brand").textContent));
  }

  if (PUBLIC || storedToken()) { showConsole(); } else { askToken(); }
})();
