// keyrelay dashboard behaviour: copy buttons, the Print buttons, the
// countdown of Resend Access Instructions, the email carried from the
// sign-in form to "Forgot your password?", and the visitor's "Open at the
// box" form. Loaded as a file: the pages allow no inline script.
(function () {
  "use strict";

  function announce(btn, text) {
    var region = btn.closest("section, .card, dd, main");
    var status = region && region.querySelector(".copied");
    if (!status) status = document.getElementById("copy-status");
    if (status) status.textContent = text;
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () { return fallbackCopy(text); });
    }
    return fallbackCopy(text);
  }

  function fallbackCopy(text) {
    var ta = document.createElement("textarea");
    ta.value = text;
    ta.setAttribute("readonly", "");
    ta.className = "sr-only";
    document.body.appendChild(ta);
    ta.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(ta);
    return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest("[data-copy]");
    if (!btn) return;
    var src = document.querySelector(btn.getAttribute("data-copy"));
    if (!src) return;
    var text = src.textContent.trim();
    copyText(text).then(function () {
      btn.setAttribute("data-copied", text);
      announce(btn, btn.getAttribute("data-copied-label") || "Copied");
    }, function () {
      announce(btn, "Your browser did not allow copying: select the text and copy it yourself.");
    });
  });

  // The Print buttons of the offline codes sheet and the key data sheet
  // (no inline handlers under the page's CSP).
  document.addEventListener("click", function (ev) {
    if (ev.target.closest("[data-print]")) window.print();
  });

  // Resend Access Instructions is disabled for an hour after the
  // instructions went out. The server renders the button with the seconds
  // left (data-resend-in, computed on its clock; data-resend-at is the same
  // moment in UTC): this counts them down from the page's load on the
  // browser's monotonic clock, so a wrong clock in the browser changes
  // nothing, and enables the button when they are over, without a reload.
  // The server still refuses a resend that comes too early (429).
  function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

  function timeLeft(s) {
    var m = Math.floor(s / 60), r = s % 60;
    if (m === 0) return plural(r, "second");
    return plural(m, "minute") + (r ? " " + plural(r, "second") : "");
  }

  function countdown(btn) {
    var secs = parseInt(btn.getAttribute("data-resend-in"), 10);
    var left = document.getElementById("resend-left");
    var why = document.getElementById("resend-why");
    var status = document.getElementById("resend-status");
    if (isNaN(secs) || !left) return;
    var clock = window.performance && performance.now ? function () { return performance.now(); } : Date.now;
    var end = clock() + secs * 1000;
    var announcedMinute = false;
    var timer;
    function tick() {
      var s = Math.max(0, Math.ceil((end - clock()) / 1000));
      if (s > 0) {
        left.textContent = timeLeft(s);
        btn.setAttribute("data-resend-left", String(s));
        if (s <= 60 && !announcedMinute && status) {
          announcedMinute = true;
          status.textContent = "You can resend the access instructions in less than a minute.";
        }
        return;
      }
      window.clearInterval(timer);
      btn.disabled = false;
      btn.removeAttribute("data-resend-left");
      if (why) why.textContent = "The hour has passed: you can resend the access instructions now.";
      if (status) status.textContent = "Resend Access Instructions is available now.";
    }
    timer = window.setInterval(tick, 1000);
    tick();
  }

  var resend = document.querySelector("button[data-resend-in][disabled]");
  if (resend) countdown(resend);

  // "Forgot your password?" takes the email typed on the sign-in form
  // along, so that the reset form is filled in already.
  var forgot = document.querySelector("a[data-carry-email]");
  var typed = forgot && document.querySelector(forgot.getAttribute("data-carry-email"));
  if (typed) {
    var carry = function () {
      var v = typed.value.trim();
      forgot.setAttribute("href", "/forgot-password" + (v ? "?email=" + encodeURIComponent(v) : ""));
    };
    typed.addEventListener("input", carry);
    typed.addEventListener("change", carry);
    carry();
  }

  var reasons = {
    wrong_screen_code: "That is not the code on the box's screen, or it has changed. Type the code the screen shows now.",
    not_started: "Your access has not started yet. Come back at the start of your booking.",
    ended: "Your access has ended.",
    revoked: "Your access was cancelled.",
    on_hold: "Your booking is not confirmed yet.",
    box_offline: "The box is offline right now. Type your booking code on the box's keypad instead.",
    key_not_here: "The key is not in the box right now. Please contact the business.",
    locked: "Too many tries. Wait a little, or type your booking code on the keypad."
  };

  var form = document.getElementById("open-form");
  if (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var out = document.getElementById("open-result");
      var input = document.getElementById("screen_code");
      var code = input.value.replace(/\s+/g, "");
      if (!/^[0-9]{6}$/.test(code)) {
        out.textContent = "Type the 6 digits shown on the box's screen.";
        input.setAttribute("aria-invalid", "true");
        input.focus();
        return;
      }
      input.removeAttribute("aria-invalid");
      out.textContent = "Opening…";
      fetch("/b/" + encodeURIComponent(form.getAttribute("data-token")) + "/open", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Accept": "application/json" },
        body: JSON.stringify({ screen_code: code }),
        credentials: "omit"
      }).then(function (res) {
        return res.json().catch(function () { return {}; }).then(function (body) { return { status: res.status, body: body }; });
      }).then(function (r) {
        if (r.status === 200 && r.body.result === "open") {
          out.textContent = "Bin " + r.body.bin + " is opening: take your key and close the door.";
        } else if (r.status === 200) {
          out.textContent = reasons[r.body.reason] || r.body.message || "The box refused to open.";
        } else if (r.status === 429) {
          out.textContent = reasons.locked;
        } else if (r.body && r.body.detail) {
          out.textContent = r.body.detail;
        } else {
          out.textContent = "Something went wrong. Type your booking code on the box's keypad instead.";
        }
      }, function () {
        out.textContent = "No connection. Type your booking code on the box's keypad instead.";
      });
    });
  }
})();
