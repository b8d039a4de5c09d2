"""
The pages of the account flows that go through a link mailed to the person:
verifying an address, resetting a password, changing the password or the address.
"""
