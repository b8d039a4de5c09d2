"""
Outgoing mail: a durable outbox in the database, filled inside the
transactions that cause a message and emptied by the node's delivery
service through SMTP (or into a maildir when no server is configured).

This package must never send mail from a worker or from inside a database
transaction: a transaction only queues; the node sends.
"""
