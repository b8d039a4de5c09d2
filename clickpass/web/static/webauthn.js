// Clickpass: passkeys and security keys (WebAuthn) on the pages that use them.
//
// Served as /static/webauthn.js (by the front, like every static file) and
// run under the pages' Content-Security-Policy (no inline script); the pages
// are clickpass/mfa's. A form marked data-webauthn="create" or "get" asks the
// address in its data-options for the ceremony's options (a POST with its
// CSRF token), calls navigator.credentials, puts the answer (JSON, binary
// parts in base64url) in its "credential" field and submits itself. A form
// marked data-webauthn-conditional also offers passkeys in the browser's
// autofill of a field whose autocomplete says "webauthn", where the browser
// can. Forms stay hidden where the browser has no WebAuthn at all.
"use strict";
(function () {
  if (!document.querySelector("form[data-webauthn]")) {
    return;
  }

  function toBytes(text) {
    const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "===".slice((base64.length + 3) % 4);
    return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
  }

  function toText(buffer) {
    const bytes = new Uint8Array(buffer);
    let binary = "";
    for (const byte of bytes) {
      binary += String.fromCharCode(byte);
    }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function descriptors(list) {
    return (list || []).map((d) => Object.assign({}, d, { id: toBytes(d.id) }));
  }

  function creationOptions(json) {
    const options = Object.assign({}, json);
    options.challenge = toBytes(json.challenge);
    options.user = Object.assign({}, json.user, { id: toBytes(json.user.id) });
    options.excludeCredentials = descriptors(json.excludeCredentials);
    return options;
  }

  function requestOptions(json) {
    const options = Object.assign({}, json);
    options.challenge = toBytes(json.challenge);
    options.allowCredentials = descriptors(json.allowCredentials);
    return options;
  }

  function answerJSON(credential) {
    const r = credential.response;
    const response = { clientDataJSON: toText(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = toText(r.attestationObject);
      response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      response.authenticatorData = toText(r.authenticatorData);
      response.signature = toText(r.signature);
      if (r.userHandle) {
        response.userHandle = toText(r.userHandle);
      }
    }
    return {
      id: credential.id,
      rawId: toText(credential.rawId),
      type: credential.type,
      response: response,
      authenticatorAttachment: credential.authenticatorAttachment || undefined,
      clientExtensionResults: credential.getClientExtensionResults(),
    };
  }

  async function fetchOptions(form) {
    const body = new URLSearchParams();
    for (const name of ["csrf_token", "kind", "device"]) {
      const field = form.elements[name];
      if (field) {
        body.append(name, field.value);
      }
    }
    const answer = await fetch(form.dataset.options, {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { accept: "application/json" },
    });
    let data = {};
    try {
      data = await answer.json();
    } catch (e) {
      data = {};
    }
    if (!answer.ok) {
      throw new Error(data.error || words(form, "noStart", "Clickpass could not start. Reload the page and try again."));
    }
    return data;
  }

  // One of the page's own sentences (its error box's data-*, in the page's
  // language), or the English one when the page does not carry it.
  function words(form, name, english) {
    const box = form.querySelector("[data-webauthn-error]");
    return (box && box.dataset[name]) || english;
  }

  function say(form, message) {
    const box = form.querySelector("[data-webauthn-error]");
    if (box) {
      box.textContent = message;
      box.hidden = false;
    }
  }

  function explain(form, error) {
    if (error && error.name === "NotAllowedError") {
      return words(form, "cancelled", "The request was cancelled or timed out. Try again.");
    }
    if (error && error.name === "InvalidStateError" && form.dataset.webauthn === "create") {
      return words(form, "registered", "That key is registered already.");
    }
    return (error && error.message) || words(form, "failed", "Something went wrong. Try again.");
  }

  async function run(form, conditional) {
    const options = await fetchOptions(form);
    let credential;
    if (form.dataset.webauthn === "create") {
      credential = await navigator.credentials.create({ publicKey: creationOptions(options) });
    } else {
      const request = { publicKey: requestOptions(options) };
      if (conditional) {
        request.mediation = "conditional";
        request.signal = conditional.signal;
      }
      credential = await navigator.credentials.get(request);
    }
    if (!credential) {
      throw new Error(words(form, "noAnswer", "No key answered. Try again."));
    }
    form.elements.credential.value = JSON.stringify(answerJSON(credential));
    form.submit();
  }

  // The pending autofill request: stopped, and waited for, before a button
  // asks instead (a browser runs one WebAuthn request at a time).
  let pending = null;

  async function stopAutofill() {
    if (pending) {
      const stopping = pending;
      pending = null;
      stopping.controller.abort();
      await stopping.done;
    }
  }

  for (const form of document.querySelectorAll("form[data-webauthn]")) {
    if (!window.PublicKeyCredential || !navigator.credentials) {
      continue;
    }
    form.hidden = false;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const button = form.querySelector("button");
      if (button) {
        button.disabled = true;
      }
      stopAutofill()
        .then(() => run(form, null))
        .catch((error) => {
          if (button) {
            button.disabled = false;
          }
          say(form, explain(form, error));
        });
    });
    const canAutofill = PublicKeyCredential.isConditionalMediationAvailable;
    if (form.dataset.webauthnConditional !== undefined && canAutofill) {
      PublicKeyCredential.isConditionalMediationAvailable().then((available) => {
        if (!available || pending) {
          return;
        }
        const controller = new AbortController();
        // Dismissed or stopped: nothing to tell; the button still works.
        pending = { controller: controller, done: run(form, controller).catch(() => {}) };
      });
    }
  }
})();
