"""
The OpenID 2.0 provider: python3-openid's server library on our storage,
with per-site identifiers, discovery, consent and remembered approvals.

python3-openid is synchronous. Nothing in this package may call it, or its
store, on the reactor thread: the web glue hands every library call to a
thread, and the store reaches the database through the storage's pool.
"""
