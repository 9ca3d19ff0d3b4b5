"""What went wrong in an SSO sign-in, and what to change on the IdP's side (the test page lists both)."""

from __future__ import annotations

#: For each problem code, the likely fix on the IdP side.
FIXES: dict[str, str] = {
    "xml_malformed": "The IdP sent something that is not a SAML response. Check the ACS URL points at this portal.",
    "xml_dtd": "Responses with a DOCTYPE are refused. No real IdP sends one: check nothing rewrites the response.",
    "xml_too_large": "Send fewer attributes (group lists are the usual cause).",
    "idp_status": "The IdP refused the sign-in: check the user is assigned to the application in the IdP.",
    "encrypted_assertion": "Turn off assertion encryption in the IdP's application settings.",
    "destination": "The ACS URL (Single sign-on URL / Reply URL) in the IdP must be exactly this connection's ACS URL.",
    "certificate_expired": "The IdP's signing certificate has expired: create a new one in the IdP and upload it here.",
    "certificate_invalid": "Paste the IdP's X.509 signing certificate in PEM form.",
    "signature_invalid": "The response is not signed with the certificate configured here: download the IdP's current "
    "signing certificate (or re-fetch the metadata) and save it on this connection.",
    "signature_wrapping": "The response was altered after the IdP signed it. Do not route it through anything that rewrites it.",
    "unsigned": "Make the IdP sign the assertion or the response (Okta: 'Assertion Signature: Signed').",
    "assertion_count": "Configure the IdP to send exactly one assertion.",
    "issuer": "The IdP entity id (Issuer) configured here must match the IdP's. Re-fetch or re-upload its metadata.",
    "not_yet_valid": "Clock skew: the IdP's clock is ahead of ours. Check NTP on the IdP or this server.",
    "expired": "The assertion had expired when it arrived: check the clocks (NTP) on both sides, "
    "or a browser that waited too long.",
    "audience": "The Audience URI (SP entity id) in the IdP must be exactly this connection's entity id.",
    "subject": "Configure the IdP to send a bearer subject confirmation (the default of every IdP).",
    "in_response_to": "The sign-in answered a request this portal did not make, or made for another browser. "
    "Start again from the portal.",
    "idp_initiated": "Start the sign-in from the portal's login page, or allow IdP-initiated sign-in on this connection.",
    "replay": "This assertion was already used. Start a new sign-in.",
    "other_connection": "The response belongs to another connection: check the ACS URL in the IdP.",
    "missing_email": "Map an email attribute in the IdP (the NameID as email address, or an 'email' attribute).",
    "email_domain": "The email is outside the organization's verified domains. Verify the domain, or allow other "
    "domains on this connection.",
    "inactive": "Activate the connection in the SSO widget.",
    "oidc_discovery": "Check the issuer URL: {issuer}/.well-known/openid-configuration must answer.",
    "oidc_token": "Check the client id and client secret, and that the redirect URI is registered in the IdP.",
    "oidc_id_token": "The ID token did not verify: check the issuer and client id.",
    "oidc_error": "The IdP refused the sign-in: check the user is assigned to the application.",
    "oidc_state": "Start the sign-in again from the portal, in the same browser (the answer was for another "
    "sign-in, used twice, or older than 10 minutes).",
    "oidc_signature": "The ID token is not signed by a key in the IdP's JWKS: check the issuer URL points at the "
    "IdP that issued it.",
    "oidc_issuer": "The issuer configured here must be exactly the IdP's issuer (see its discovery document).",
    "oidc_audience": "The client id configured here must be the client id of the application in the IdP.",
    "oidc_nonce": "Start the sign-in again from the portal; the IdP must return the nonce it was sent.",
    "email_unverified": "Verify the user's email address in the IdP, or send a verified address.",
    "feature": "Single sign-on is switched off for this organization: ask the app owner to enable it.",
    "ssrf": "The URL points at a private or loopback address, which the portal does not fetch.",
    "fetch": "The portal could not fetch the URL: check it is reachable from the portal's server.",
    "metadata_invalid": "Use the IdP's SAML metadata (an EntityDescriptor with an IDPSSODescriptor).",
}


class SsoProblem(Exception):
    """A refused SSO response or configuration: a code (for audit and the fix) and a message for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def fix(self) -> str:
        return FIXES.get(self.code, "")
