// The Images page's import with a progress bar: the chosen file is sent as the raw request body
// (XMLHttpRequest reports upload progress; fetch does not), so the server streams it straight
// into the image store. Without JavaScript the form posts as multipart and works all the same.
(function () {
  "use strict";
  var form = document.getElementById("image-upload");
  if (!form || !window.XMLHttpRequest) { return; }
  var input = document.getElementById("image-file");
  var format = document.getElementById("image-format");
  var box = document.getElementById("image-progress");
  var bar = document.getElementById("image-progress-bar");
  var said = document.getElementById("image-progress-text");
  var problem = document.getElementById("image-upload-error");
  var button = form.querySelector("button[type=submit]");
  var token = document.querySelector("meta[name=csrf-token]");

  function fail(message) {
    problem.textContent = message;
    problem.hidden = false;
    box.hidden = true;
    button.disabled = false;
  }

  function mib(bytes) { return (bytes / 1048576).toFixed(1) + " MiB"; }

  form.addEventListener("submit", function (event) {
    var file = input.files && input.files[0];
    if (!file) { return; }  // the browser's own "required" message
    event.preventDefault();
    problem.hidden = true;
    var limit = Number(form.dataset.maxBytes || 0);
    if (limit && file.size > limit) {
      fail("This file is larger than the upload limit (" + mib(limit) + ").");
      return;
    }
    var request = new XMLHttpRequest();
    request.open("POST", "/images");
    request.setRequestHeader("Content-Type", "application/octet-stream");
    request.setRequestHeader("X-Requested-With", "XMLHttpRequest");
    request.setRequestHeader("X-Image-Name", encodeURIComponent(file.name));
    if (format.value) { request.setRequestHeader("X-Image-Format", format.value); }
    if (token) { request.setRequestHeader("X-CSRF-Token", token.content); }
    request.upload.addEventListener("progress", function (progress) {
      if (!progress.lengthComputable) { return; }
      bar.value = Math.floor(100 * progress.loaded / progress.total);
      said.textContent = mib(progress.loaded) + " of " + mib(progress.total) +
        (progress.loaded === progress.total ? " — checking the image…" : "");
    });
    request.addEventListener("load", function () {
      var answer = null;
      try { answer = JSON.parse(request.responseText); } catch (error) { answer = null; }
      if (answer && answer.ok) {
        window.location.assign("/images");  // the flash cookie says what was imported
      } else {
        fail(answer && answer.message ? answer.message : "The import failed (HTTP " + request.status + ").");
      }
    });
    request.addEventListener("error", function () { fail("The upload was cut off; nothing was imported."); });
    box.hidden = false;
    bar.value = 0;
    said.textContent = "Starting…";
    button.disabled = true;
    request.send(file);
  });
}());
