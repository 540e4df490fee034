// keyrelay dashboard behaviour: copy buttons and the visitor's "Open at
// the box" form. Loaded as a file: the pages allow no inline script.
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

  // The offline codes sheet's Print button (no inline handlers under the
  // page's CSP).
  document.addEventListener("click", function (ev) {
    if (ev.target.closest("[data-print]")) window.print();
  });

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
