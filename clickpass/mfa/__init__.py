"""
Second factors: TOTP authenticator apps, single-use recovery codes, the
second sign-in step, step-up before sensitive actions, trusted browsers,
and what a sign-in's strength is worth to partners (OpenID PAPE).
"""
