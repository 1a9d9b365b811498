"""Who the user is: authenticators (directory password, certificate, TOTP), revocation, lockout, portal session.

Each authenticator is a small `sso.base.Authenticator` subclass in its own module (`sso.ldap` for passwords).
"""
