"""
The OpenID Connect provider. So far only its signing keys (L{clickpass.oidc.keys})
and their control commands; the endpoints are not built yet.
"""
