// The portal: who you are, your instance, the shared repositories and your workspace.
// Plain JavaScript, no build step; everything it needs is served by the gateway.
(function () {
  "use strict";

  var NAME = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$/;
  var repos = [];
  var progress = null;
  var workspace = null;

  function $(id) { return document.getElementById(id); }

  function el(tag, className, text) {
    var e = document.createElement(tag);
    if (className) { e.className = className; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }

  // A list row: the information on the left, one action button on the right.
  function row(className, key, parts, action) {
    var li = el("li", className);
    li.dataset.name = key;
    var info = el("div");
    parts.forEach(function (part) { info.appendChild(part); });
    var button = el("button", action.className, action.text);
    button.type = "button";
    button.setAttribute("aria-label", action.label);
    button.addEventListener("click", function () { action.run(button); });
    li.appendChild(info);
    li.appendChild(button);
    return li;
  }

  function api(method, path, body) {
    var init = { method: method, headers: { "accept": "application/json" } };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (resp) {
      if (resp.status === 401) {
        window.location.href = "/-/login?next=" + encodeURIComponent("/-/");
        return new Promise(function () {});
      }
      return resp.json().catch(function () { return {}; }).then(function (data) {
        return { status: resp.status, ok: resp.ok, data: data };
      });
    });
  }

  function when(ms) {
    if (!ms) { return "—"; }
    return new Date(ms).toLocaleString();
  }

  function size(bytes) {
    if (bytes === null || bytes === undefined) { return "size…"; }
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0, n = bytes;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  }

  // ---- who -------------------------------------------------------------------------------
  function loadMe() {
    return api("GET", "/-/api/me").then(function (r) {
      if (!r.ok) { return; }
      $("user-name").textContent = r.data.name || r.data.userId;
      $("user-email").textContent = r.data.email || "";
      workspace = r.data.workspaceDirectory || null;
      $("admin-link").hidden = r.data.admin !== true;
      // Only an explicit false: a gateway that does not say has nothing to warn about.
      $("no-keys").hidden = r.data.modelsConfigured !== false;
      renderInstance(r.data.instance);
      // Opening the gateway's address starts OpenCode: show it coming up.
      var state = r.data.instance && r.data.instance.state;
      if (state === "queued" || state === "starting") { follow(); }
    });
  }

  // ---- instance --------------------------------------------------------------------------
  function renderInstance(inst) {
    var state = inst.state || "stopped";
    var working = state === "ready" && inst.busySessions > 0;
    $("state").textContent = working ? "Ready — agent working"
      : state.charAt(0).toUpperCase() + state.slice(1);
    $("indicator").className = "dot " + state;
    $("instance-message").textContent = inst.message || "";
    $("started-at").textContent = when(inst.startedAt);
    $("last-activity").textContent = when(inst.lastActivity);
    renderDisk(inst.diskBytes, inst.diskQuota);
    if (inst.llm) { renderUsage(inst.llm, inst.llmDailyTokens); }
    var busy = state === "queued" || state === "starting" || state === "stopping";
    $("start").disabled = busy || state === "ready";
    $("stop").disabled = busy || state === "stopped";
    $("restart").disabled = busy || state !== "ready";
  }

  // Tokens through the organisation's keys today (UTC), against the daily budget if any.
  function renderUsage(llm, budget) {
    var tokens = (llm.inputTokens || 0) + (llm.outputTokens || 0);
    var text = tokens.toLocaleString("en") + " tokens in " + (llm.requests || 0) + " calls";
    if (budget) { text += " (of " + budget.toLocaleString("en") + " a day)"; }
    $("llm-usage").textContent = text;
  }

  // From 90% of the quota the person is told; at 100% new starts are refused.
  function renderDisk(bytes, quota) {
    var known = bytes !== null && bytes !== undefined;
    $("disk").textContent = !known ? "—" : quota ? size(bytes) + " of " + size(quota) : size(bytes);
    var warning = $("disk-warning");
    if (known && quota && bytes * 100 >= quota * 90) {
      warning.textContent = bytes >= quota
        ? "Your home is over its disk quota: OpenCode cannot start again until space is freed."
        : "Your home is nearly full: delete files you no longer need.";
      warning.hidden = false;
    } else {
      warning.hidden = true;
    }
  }

  function refreshInstance() {
    return api("GET", "/-/api/instance").then(function (r) {
      if (r.ok) { renderInstance(r.data); }
    });
  }

  // Live while something happens: the progress stream ends at ready, failed or stopped.
  function follow() {
    if (progress) { progress.close(); }
    progress = new EventSource("/-/api/instance/progress");
    progress.onmessage = function (ev) {
      try { renderInstance(JSON.parse(ev.data)); } catch (e) { /* a keep-alive */ }
    };
    progress.onerror = function () {
      progress.close();
      progress = null;
      refreshInstance();
    };
  }

  function act(path) {
    return api("POST", path).then(function (r) {
      if (!r.ok && r.data && r.data.error) { $("instance-message").textContent = r.data.error; }
      follow();
      return refreshInstance();
    });
  }

  $("start").addEventListener("click", function () { act("/-/api/instance/start"); });
  $("stop").addEventListener("click", function () { act("/-/api/instance/stop"); });
  $("restart").addEventListener("click", function () {
    api("POST", "/-/api/instance/stop").then(function () { act("/-/api/instance/start"); });
  });

  // ---- repositories ----------------------------------------------------------------------
  function renderRepos() {
    var query = $("repo-search").value.trim().toLowerCase();
    var list = $("repos");
    list.textContent = "";
    var shown = repos.filter(function (r) {
      return !query || r.name.toLowerCase().indexOf(query) >= 0 ||
        (r.description || "").toLowerCase().indexOf(query) >= 0;
    });
    $("repos-empty").hidden = repos.length > 0;
    shown.forEach(function (r) {
      list.appendChild(row("repo", r.name, [
        el("span", "repo-name", r.name),
        el("span", "badge", r.kind + (r.defaultBranch ? " · " + r.defaultBranch : "")),
        el("div", "description", r.description || ""),
        el("div", "meta", size(r.sizeBytes) + " · changed " + when(r.lastModified))
      ], {
        className: "clone", text: "Clone", label: "Clone " + r.name,
        run: function () { openClone(r.name); }
      }));
    });
  }

  function loadRepos() {
    return api("GET", "/-/api/repos").then(function (r) {
      if (!r.ok) { return; }
      repos = r.data;
      renderRepos();
      // Sizes arrive in the background; look again while any is missing.
      if (repos.some(function (x) { return x.sizeBytes === null; })) {
        setTimeout(loadRepos, 2000);
      }
    });
  }

  $("repo-search").addEventListener("input", renderRepos);

  // ---- workspace -------------------------------------------------------------------------
  function loadWorkspace() {
    return api("GET", "/-/api/workspace").then(function (r) {
      if (!r.ok) { return; }
      var list = $("workspace");
      list.textContent = "";
      $("workspace-empty").hidden = r.data.length > 0;
      r.data.forEach(function (p) {
        var failure = el("div", "error");
        failure.setAttribute("role", "alert");
        list.appendChild(row("project", p.name, [
          el("span", "repo-name", p.name),
          el("div", "meta", (p.isGit ? "git · " : "") + "changed " + when(p.lastModified)),
          failure
        ], {
          className: "open", text: "Open", label: "Open " + p.name + " in OpenCode",
          run: function (button) { openInOpenCode(p.path, p.name, button, failure, false); }
        }));
      });
    });
  }

  // OpenCode's UI opens a folder as a project only through one of its sessions: its
  // "/:dir/session/:id" address, dir being the folder's UTF-8 path in unpadded base64url
  // ("/:dir/session" alone shows an empty new session without the project). So opening a
  // project finds or makes a session there first, through OpenCode's own API.
  function base64url(text) {
    var bytes = new TextEncoder().encode(text), binary = "";
    for (var i = 0; i < bytes.length; i += 1) { binary += String.fromCharCode(bytes[i]); }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  // The newest top-level session in `path`, or a new one named `title`. OpenCode answers
  // once it is ready, so a stopped one is started first: the instance card shows that.
  function sessionIn(path, title, reuse) {
    var dir = "directory=" + encodeURIComponent(path);
    var found = reuse ? api("GET", "/session?" + dir) : Promise.resolve(null);
    return found.then(function (r) {
      if (r && r.ok && Array.isArray(r.data)) {
        var mine = r.data.filter(function (s) { return s.directory === path && !s.parentID; });
        mine.sort(function (a, b) {
          return ((b.time && b.time.updated) || 0) - ((a.time && a.time.updated) || 0);
        });
        if (mine.length) { return { ok: true, data: mine[0] }; }
      }
      return api("POST", "/session?" + dir, { title: title });
    });
  }

  function openInOpenCode(path, title, button, failure, reuse) {
    var label = button.textContent;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    button.textContent = "Opening…";
    failure.textContent = "";
    follow();
    function again(message) {
      failure.textContent = message;
      button.disabled = false;
      button.removeAttribute("aria-busy");
      button.textContent = label;
    }
    sessionIn(path, title, reuse)
      .then(function (r) {
        if (r.ok && r.data && r.data.id) {
          window.location.href = "/" + base64url(path) + "/session/" + encodeURIComponent(r.data.id);
          return;
        }
        again((r.data && (r.data.error || r.data.message)) ||
          ("OpenCode could not open it (" + r.status + ")."));
      })
      .catch(function (e) { again("OpenCode could not open it: " + e.message); });
  }

  $("open-opencode").addEventListener("click", function (event) {
    if (!workspace) { return; } // the plain link still lands somewhere useful
    event.preventDefault();
    openInOpenCode(workspace, "Workspace", $("open-opencode"), $("open-error"), true);
  });

  // ---- clone dialog ----------------------------------------------------------------------
  var cloneSource = null;
  var clonedPath = null;

  function validate() {
    var value = $("clone-target").value;
    var why = "";
    if (!value) { why = "Choose a name."; }
    else if (value.charAt(0) === ".") { why = "The name must not start with “.”."; }
    else if (value.length > 100) { why = "At most 100 characters."; }
    else if (!NAME.test(value)) { why = "Only letters, digits, “.”, “_” and “-”."; }
    $("clone-error").textContent = why;
    $("clone-target").setAttribute("aria-invalid", why ? "true" : "false");
    $("clone-submit").disabled = !!why;
    return !why;
  }

  function openClone(source) {
    cloneSource = source;
    $("clone-source").textContent = source;
    // A bare repository's ".git" is not part of the project's name.
    $("clone-target").value = /^.+\.git$/.test(source) ? source.slice(0, -4) : source;
    $("clone-progress").hidden = true;
    $("clone-done").hidden = true;
    $("clone-open").disabled = false;
    $("clone-target").disabled = false;
    validate();
    $("clone-dialog").showModal();
    $("clone-target").focus();
  }

  $("clone-target").addEventListener("input", validate);
  $("clone-open").addEventListener("click", function () {
    openInOpenCode(clonedPath, clonedPath.split("/").pop(), $("clone-open"), $("clone-error"), false);
  });
  $("clone-cancel").addEventListener("click", function () { $("clone-dialog").close(); });
  $("clone-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    if (!validate()) { return; }
    var target = $("clone-target").value;
    $("clone-submit").disabled = true;
    $("clone-target").disabled = true;
    $("clone-progress").hidden = false;
    api("POST", "/-/api/repos/" + encodeURIComponent(cloneSource) + "/clone", { targetName: target })
      .then(function (r) {
        $("clone-progress").hidden = true;
        if (r.ok && r.data.success) {
          $("clone-done").hidden = false;
          $("clone-path").textContent = "~/workspace/" + target;
          clonedPath = r.data.targetPath;
          loadWorkspace();
        } else {
          $("clone-error").textContent = (r.data && r.data.error) || ("Cloning failed (" + r.status + ").");
          $("clone-target").disabled = false;
          $("clone-submit").disabled = false;
          $("clone-target").focus();
        }
      })
      .catch(function (e) {
        $("clone-progress").hidden = true;
        $("clone-error").textContent = "Cloning failed: " + e.message;
        $("clone-target").disabled = false;
        $("clone-submit").disabled = false;
      });
  });

  loadMe();
  loadRepos();
  loadWorkspace();
  setInterval(refreshInstance, 10000);
})();
