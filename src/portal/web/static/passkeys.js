// Passkeys in the portal: sign-in on /login (the button, and the email field's autofill where the browser
// supports conditional mediation), adding a passkey and confirming it's you in the Security widget.
//
// Loaded with <script src defer> (the CSP allows no inline script). Each ceremony asks the server for
// options (JSON), lets the browser talk to the authenticator, and posts PublicKeyCredential.toJSON() back
// with the page's CSRF token in the x-csrftoken header. The server answers {"redirect": url} or
// {"error": {"detail": ..., "reason": ...}}.
(function () {
  "use strict";

  var supported =
    typeof window.PublicKeyCredential === "function" &&
    !!navigator.credentials &&
    typeof navigator.credentials.get === "function";

  // --- encoding (for browsers without the JSON helpers) ----------------------------------------------

  function toBuffer(value) {
    var base64 = value.replace(/-/g, "+").replace(/_/g, "/");
    base64 += "====".slice((base64.length + 3) % 4 + 1);
    var binary = atob(base64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes.buffer;
  }

  function toBase64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function withIds(list) {
    return (list || []).map(function (item) {
      return Object.assign({}, item, { id: toBuffer(item.id) });
    });
  }

  function creationOptions(json) {
    if (typeof PublicKeyCredential.parseCreationOptionsFromJSON === "function") {
      return PublicKeyCredential.parseCreationOptionsFromJSON(json);
    }
    return Object.assign({}, json, {
      challenge: toBuffer(json.challenge),
      user: Object.assign({}, json.user, { id: toBuffer(json.user.id) }),
      excludeCredentials: withIds(json.excludeCredentials),
    });
  }

  function requestOptions(json) {
    if (typeof PublicKeyCredential.parseRequestOptionsFromJSON === "function") {
      return PublicKeyCredential.parseRequestOptionsFromJSON(json);
    }
    return Object.assign({}, json, {
      challenge: toBuffer(json.challenge),
      allowCredentials: withIds(json.allowCredentials),
    });
  }

  function credentialJSON(credential) {
    if (typeof credential.toJSON === "function") {
      try {
        return credential.toJSON();
      } catch (ignored) {
        // Some password-manager extensions replace the credential object; encode it by hand below.
      }
    }
    var response = credential.response;
    var out = {
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || null,
      clientExtensionResults: credential.getClientExtensionResults ? credential.getClientExtensionResults() : {},
      response: { clientDataJSON: toBase64url(response.clientDataJSON) },
    };
    if (response.attestationObject) {
      out.response.attestationObject = toBase64url(response.attestationObject);
      out.response.transports = response.getTransports ? response.getTransports() : [];
    } else {
      out.response.authenticatorData = toBase64url(response.authenticatorData);
      out.response.signature = toBase64url(response.signature);
      out.response.userHandle = response.userHandle ? toBase64url(response.userHandle) : null;
    }
    return out;
  }

  // --- talking to the portal ---------------------------------------------------------------------------

  function csrfToken() {
    var input = document.querySelector('input[name="_csrf_token"]');
    return input ? input.value : "";
  }

  function postJSON(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", accept: "application/json", "x-csrftoken": csrfToken() },
      body: JSON.stringify(body || {}),
    }).then(function (response) {
      return response
        .json()
        .catch(function () {
          return null;
        })
        .then(function (data) {
          return { ok: response.ok, status: response.status, data: data };
        });
    });
  }

  function Refused(message, result) {
    this.message = message;
    this.result = result;
  }

  function refusal(result) {
    var error = result.data && result.data.error;
    var message = (error && error.detail) || "Something went wrong (" + result.status + "). Try again.";
    return new Refused(message, result);
  }

  function browserError(error, kind) {
    if (error instanceof Refused) return error.message;
    switch (error && error.name) {
      case "AbortError":
        return "";
      case "NotAllowedError":
        return "The passkey request was cancelled or timed out.";
      case "InvalidStateError":
        return kind === "register"
          ? "This device or password manager already has a passkey for your account."
          : "The passkey request could not start. Try again.";
      case "SecurityError":
        return "Passkeys are not available at this address. Open the portal at its public address.";
      case "NotSupportedError":
        return "This browser or device cannot make the kind of passkey needed here.";
      default:
        return "The passkey request failed. Try again. (" + ((error && error.message) || error) + ")";
    }
  }

  function show(el, message) {
    if (!el) return;
    el.textContent = message;
    el.hidden = !message;
  }

  function follow(result) {
    if (result.ok && result.data && result.data.redirect) {
      window.location.assign(result.data.redirect);
      return true;
    }
    var error = result.data && result.data.error;
    if (error && error.reason === "step_up" && error.redirect) {
      window.location.assign(error.redirect);
      return true;
    }
    return false;
  }

  // --- the ceremonies ------------------------------------------------------------------------------------

  function register(button) {
    return postJSON(button.dataset.optionsUrl).then(function (options) {
      if (follow(options)) return null;
      if (!options.ok) throw refusal(options);
      return navigator.credentials
        .create({ publicKey: creationOptions(options.data) })
        .then(function (credential) {
          return postJSON(button.dataset.verifyUrl, { credential: credentialJSON(credential) });
        })
        .then(function (result) {
          if (!follow(result)) throw refusal(result);
        });
    });
  }

  // What assert() resolves to when the portal answered with a page to go to (signed in, or step-up).
  var LEAVING = "leaving";

  function assert(optionsUrl, verifyUrl, extra, mediation, signal) {
    return postJSON(optionsUrl).then(function (options) {
      if (follow(options)) return LEAVING;
      if (!options.ok) throw refusal(options);
      var publicKey = requestOptions(options.data);
      var request = { publicKey: publicKey };
      if (mediation) request.mediation = mediation;
      if (signal) request.signal = signal;
      return navigator.credentials.get(request).then(function (credential) {
        if (!credential) return null;
        var answer = credentialJSON(credential);
        return postJSON(verifyUrl, Object.assign({ credential: answer }, extra())).then(function (result) {
          if (follow(result)) return LEAVING;
          var error = result.data && result.data.error;
          if (error && error.reason === "unknown_credential" && PublicKeyCredential.signalUnknownCredential) {
            // Lets the password manager hide a passkey this portal no longer knows.
            PublicKeyCredential.signalUnknownCredential({ rpId: options.data.rpId, credentialId: answer.id }).catch(
              function () {}
            );
          }
          throw refusal(result);
        });
      });
    });
  }

  function busy(button, on) {
    button.disabled = on;
    if (on) button.setAttribute("aria-busy", "true");
    else button.removeAttribute("aria-busy");
  }

  // --- wiring --------------------------------------------------------------------------------------------

  function loginExtra() {
    var form = document.querySelector('form[action="/login"]');
    function field(name) {
      var input = form && form.querySelector('input[name="' + name + '"]');
      return input ? input.value : "";
    }
    return { return_to: field("return_to"), organization: field("organization") };
  }

  function setUpLogin(button) {
    var status = document.getElementById(button.dataset.status);
    var conditional = null;
    var arming = Promise.resolve();

    function startConditional() {
      var field = document.querySelector('input[autocomplete~="webauthn"]');
      if (!field || !PublicKeyCredential.isConditionalMediationAvailable) return;
      arming = PublicKeyCredential.isConditionalMediationAvailable()
        .then(function (available) {
          if (!available) return;
          var controller = new AbortController();
          var pending = assert(
            button.dataset.optionsUrl,
            button.dataset.verifyUrl,
            loginExtra,
            "conditional",
            controller.signal
          ).catch(function (error) {
            if (conditional && conditional.controller === controller) conditional = null;
            // The autofill request was not the user's idea: only the portal's answer to a passkey they
            // picked is worth a message (a browser refusal here just means no passkey was chosen).
            if (error instanceof Refused) show(status, error.message);
          });
          conditional = { controller: controller, pending: pending };
        })
        .catch(function () {});
    }

    function stopConditional() {
      // Only one WebAuthn request may be pending: the autofill one ends before the button's starts.
      return arming.then(function () {
        if (!conditional) return null;
        var current = conditional;
        conditional = null;
        current.controller.abort();
        return current.pending;
      });
    }

    button.addEventListener("click", function () {
      show(status, "");
      busy(button, true);
      stopConditional()
        .then(function (outcome) {
          // The autofill request had already signed in (its passkey was picked just before the click):
          // the page is on its way; a second sign-in would open a second session.
          if (outcome === LEAVING) return null;
          return assert(button.dataset.optionsUrl, button.dataset.verifyUrl, loginExtra, null, null);
        })
        .catch(function (error) {
          show(status, browserError(error, "login"));
          startConditional();
        })
        .then(function () {
          busy(button, false);
        });
    });
    startConditional();
  }

  function setUp(button) {
    var kind = button.dataset.passkey;
    if (kind === "login") {
      setUpLogin(button);
      return;
    }
    var status = document.getElementById(button.dataset.status);
    button.addEventListener("click", function () {
      show(status, "");
      busy(button, true);
      var ceremony =
        kind === "register"
          ? register(button)
          : assert(button.dataset.optionsUrl, button.dataset.verifyUrl, function () {
              return { action: button.dataset.action || "" };
            });
      ceremony
        .catch(function (error) {
          show(status, browserError(error, kind));
        })
        .then(function () {
          busy(button, false);
        });
    });
  }

  function init() {
    if (!supported) return;
    document.querySelectorAll("[data-passkey-unsupported]").forEach(function (el) {
      el.hidden = true;
    });
    document.querySelectorAll("[data-passkey-offer]").forEach(function (el) {
      el.hidden = false;
    });
    document.querySelectorAll("button[data-passkey]").forEach(function (button) {
      button.hidden = false;
      setUp(button);
      // Back from "Confirm it's you": carry on with what the user asked for (adding a passkey).
      if (button.dataset.autostart !== undefined) button.click();
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
