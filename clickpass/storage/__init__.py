"""
The application's storage: one interface over SQLite and MariaDB (L{clickpass.storage.sql}),
its migrations, the offline tools and the private servers tests and benchmarks start.

Not to be confused with L{clickpass.dbagent}, which runs the MariaDB servers themselves.
"""
