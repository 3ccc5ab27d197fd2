// The tokens page: a signed-in person's personal access tokens, for `opencode attach` and
// IDEs. A new token's value is shown once, right after it is made; the gateway keeps only
// what lets it recognise the token. Plain JavaScript, no build step.
(function () {
  "use strict";

  function $(id) { return document.getElementById(id); }

  function el(tag, className, text) {
    var e = document.createElement(tag);
    if (className) { e.className = className; }
    if (text !== undefined) { e.textContent = text; }
    return e;
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

  function errorOf(r) {
    return (r.data && typeof r.data.error === "string" && r.data.error) ||
      "the gateway answered " + r.status;
  }

  // Always resolves to {ok, status, data}; a lapsed session goes back through sign-in.
  function api(method, path, body) {
    var init = { method: method, credentials: "same-origin", headers: { "accept": "application/json" } };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (resp) {
      if (resp.status === 401) {
        window.location.href = "/-/login?next=" + encodeURIComponent("/-/tokens");
        return new Promise(function () {});
      }
      return resp.json().catch(function () { return {}; }).then(function (data) {
        return { ok: resp.ok, status: resp.status, data: data || {} };
      });
    }, function (e) {
      return { ok: false, status: 0, data: { error: "the gateway did not answer (" + e.message + ")" } };
    });
  }

  // "3 min ago", "in 29 days".
  function relative(ms) {
    var diff = ms - Date.now(), s = Math.round(Math.abs(diff) / 1000), text;
    if (s < 10) { return "just now"; }
    if (s < 60) { text = s + " s"; }
    else if (s < 3600) { text = Math.round(s / 60) + " min"; }
    else if (s < 86400) { text = Math.round(s / 3600) + " h"; }
    else { var d = Math.round(s / 86400); text = d + (d === 1 ? " day" : " days"); }
    return diff < 0 ? text + " ago" : "in " + text;
  }

  // A relative time with the exact RFC 3339 time on hover.
  function moment(iso) {
    var ms = new Date(iso).getTime();
    if (!iso || isNaN(ms)) { return iso || "—"; }
    var t = el("time", "", relative(ms));
    t.dateTime = iso;
    t.title = iso;
    return t;
  }

  function expires(iso) {
    if (!(new Date(iso).getTime() < Date.now())) { return moment(iso); }
    var span = el("span", "muted", "expired ");
    span.append(moment(iso));
    return span;
  }

  // Revoking takes two clicks, the second within 5 s, instead of a modal confirm().
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
    show(text);
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

  // ---- who -------------------------------------------------------------------------------
  function loadMe() {
    return api("GET", "/-/api/me").then(function (r) {
      if (r.ok) { $("user-name").textContent = r.data.name || r.data.userId || ""; }
    });
  }

  // ---- the list --------------------------------------------------------------------------
  // One cell per column, each carrying its column's name for the stacked layout on phones.
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

  function tokenRow(t) {
    var tr = tableRow($("tokens"));
    tr.dataset.token = t.id;
    put(tr.cells[0], t.name);
    put(tr.cells[1], moment(t.createdAt));
    put(tr.cells[2], expires(t.expiresAt));
    var revoke = el("button", "revoke");
    revoke.type = "button";
    twoStep(revoke, "Revoke", t.name, function () { revokeToken(t, revoke); });
    tr.cells[3].appendChild(revoke);
    return tr;
  }

  function loadTokens() {
    return api("GET", "/-/api/tokens").then(function (r) {
      if (!r.ok) {
        say("Could not load your tokens: " + errorOf(r) + ".", true);
        return;
      }
      var tokens = (Array.isArray(r.data) ? r.data : []).slice().sort(function (a, b) {
        return (b.createdAt || "") < (a.createdAt || "") ? -1 : 1;
      });
      $("tokens-empty").hidden = tokens.length > 0;
      $("tokens").hidden = tokens.length === 0;
      var body = $("tokens").tBodies[0];
      body.textContent = "";
      tokens.forEach(function (t) { body.appendChild(tokenRow(t)); });
    });
  }

  function revokeToken(t, b) {
    b.disabled = true;
    api("DELETE", "/-/api/tokens/" + encodeURIComponent(t.id)).then(function (r) {
      b.disabled = false;
      if (r.ok) {
        say("Revoked “" + t.name + "”.");
      } else {
        say("Could not revoke “" + t.name + "”: " + errorOf(r) + ".", true);
      }
      loadTokens();
    });
  }

  // ---- a new token -----------------------------------------------------------------------
  function showNew(t) {
    var origin = window.location.origin;
    $("new-token-value").textContent = t.token;
    // In the environment, not on the command line: other users of a machine can read
    // every process's arguments.
    $("usage-attach").textContent = "OPENCODE_SERVER_PASSWORD=" + t.token + " opencode attach " + origin;
    $("usage-curl").textContent = "curl -H @- " + origin + "/-/api/me <<< \"Authorization: Bearer " + t.token + "\"";
    $("copy-status").textContent = "";
    $("new-token").hidden = false;
    $("new-token").focus();
  }

  // Once dismissed the value leaves the page too.
  function hideNew() {
    $("new-token").hidden = true;
    ["new-token-value", "usage-attach", "usage-curl", "copy-status"].forEach(function (id) {
      $(id).textContent = "";
    });
  }

  function selectText(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  // The clipboard API exists only in secure contexts (https or localhost); elsewhere the
  // value is selected, and the old copy command tried.
  function copyToken() {
    var node = $("new-token-value");
    function copied() { $("copy-status").textContent = "Copied."; }
    function fallback() {
      selectText(node);
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      $("copy-status").textContent = ok ? "Copied." : "Selected: press Ctrl+C (⌘C on a Mac) to copy.";
    }
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(node.textContent).then(copied, fallback);
    } else {
      fallback();
    }
  }

  function setCreating(on) {
    $("token-name").disabled = on;
    $("token-days").disabled = on;
    $("token-submit").disabled = on;
    $("token-submit").textContent = on ? "Creating…" : "Create token";
  }

  $("token-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var name = $("token-name").value.trim();
    var days = Number($("token-days").value);
    if (!name) {
      say("Give the token a name.", true);
      $("token-name").focus();
      return;
    }
    if (!Number.isInteger(days) || days < 1 || days > 365) {
      say("The token must expire in 1 to 365 days.", true);
      $("token-days").focus();
      return;
    }
    hideNew();
    say("");
    setCreating(true);
    api("POST", "/-/api/tokens", { name: name, expiresInDays: days }).then(function (r) {
      setCreating(false);
      if (!r.ok || typeof r.data.token !== "string") {
        say("Could not create the token: " + errorOf(r) + ".", true);
        $("token-name").focus();
        return;
      }
      $("token-name").value = "";
      showNew(r.data);
      loadTokens();
    });
  });

  $("copy-token").addEventListener("click", copyToken);
  $("new-token-done").addEventListener("click", function () {
    hideNew();
    $("token-name").focus();
  });

  loadMe();
  loadTokens();
})();
