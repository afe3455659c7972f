// The portal's only script: a copy button for a new key's secret, and the
// usage chart's readout of the bar under the pointer or the focus: its
// <title>, which is also its accessible name. The pages work without it
// (the title is a tooltip, and the figures are in a table below the
// chart).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    var input = document.getElementById(button.getAttribute("data-copy"));
    var status = document.getElementById("copy-status");
    if (!input) {
      return;
    }
    button.addEventListener("click", function () {
      var done = function (text) {
        if (status) {
          status.textContent = text;
        }
      };
      input.focus();
      input.select();
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(input.value).then(
          function () { done("Copied to the clipboard."); },
          function () { done("Press Ctrl+C (or ⌘C) to copy the selected key."); }
        );
      } else {
        done("Press Ctrl+C (or ⌘C) to copy the selected key.");
      }
    });
  });

  var chart = document.getElementById("usage-chart");
  var readout = document.getElementById("chart-readout");
  if (chart && readout) {
    var show = function (ev) {
      var bar = ev.target.closest && ev.target.closest(".bar");
      var title = bar && bar.querySelector("title");
      if (title) {
        readout.textContent = title.textContent;
      }
    };
    chart.addEventListener("mouseover", show);
    chart.addEventListener("focusin", show);
  }
});
