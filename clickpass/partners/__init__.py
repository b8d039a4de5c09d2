"""
Partner integration: partner sites and their admins, the hosted
register/connect flow a person goes through, the partner API, and the
webhook outbox that tells partners when people link, unlink or leave.
"""
