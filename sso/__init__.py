"""Who the user is: login methods (directory password, certificate), the TOTP second factor, revocation, lockout.

Every login method is a small `sso.login.LoginMethod` subclass (template: authenticate → normalize →
blocked/allowed → Login), registered by name in `sso.methods`: `sso.password` over the directory of
`sso.ldap`, `sso.cert_auth` over sso/x509.py, sso/revocation.py and sso/cert_mapping.py. The policy of
when a second factor is due for which method is `sso.second_factor`.
"""
