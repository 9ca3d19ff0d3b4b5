"""Single sign-on for customer organizations (DESIGN §15): SAML 2.0 SP and OIDC RP flows, metadata, HRD."""
