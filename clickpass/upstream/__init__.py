"""
Upstream sign-in: people sign in to Clickpass with an account they already
have at an OpenID Connect or OAuth 2 provider (Google, Microsoft, Facebook,
or any conforming provider), and partners still receive plain OpenID.

The package never trusts anything an upstream provider says until it has
been checked (TLS, signature, issuer, audience, times, nonce, state), and
never blocks the reactor: all HTTP goes through treq.
"""
