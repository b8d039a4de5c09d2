"""
An example partner site: twisted.web with python3-openid's consumer,
integrated with Clickpass the way docs/partner-guide.md describes (the
button, the return/registration/connect URLs, webhooks).

    python -m examples.partner_site --port 8090 --provider http://127.0.0.1:8080/

It keeps its own accounts in memory (seed some with --user NAME:PASSWORD)
and is meant for demos and tests, not production: no persistence, no TLS.
It never sends a password to Clickpass: people who connect an existing
account sign in here, on the partner's own form.
"""
