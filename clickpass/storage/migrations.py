"""
Versioned schema migrations, run at start and by C{clickpass-ctl db migrate}.

Each migration is a numbered list of statements written once for both
backends; C{{pk}} and C{{opts}} expand to the dialect's auto-increment key
and table options. A migration, once released, is never edited: a change is
a new migration with the next number.

Timestamps are integer seconds since the epoch (UTC).

Each applied migration also records the oldest schema version whose code
can run on the database it leaves (C{schema_compatibility}): an
expand-only migration (the rule of tests/unit/storage/
test_migrations_expand_only.py) keeps the previous one's, so the release
before it still runs there; a contract step names its own version, or the
version since which no code uses what it removes. A node whose release is
older than the database starts when every newer migration admits it (the
way back of a rolling upgrade), and is refused otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.logger import Logger

from clickpass.storage.sql import Storage, Transaction

log = Logger()


@dataclass(frozen=True)
class Migration:
    """
    One numbered migration. C{compatible_from}: the oldest schema version
    whose code runs on a database this migration has been applied to; None
    (every expand-only migration) keeps the previous migration's value.
    """

    version: int
    name: str
    statements: tuple[str, ...]
    compatible_from: int | None = None


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "accounts, sessions, per-site identifiers, OpenID store, approvals, throttling",
        (
            """CREATE TABLE IF NOT EXISTS accounts (
                id {pk},
                uid VARCHAR(64) NOT NULL UNIQUE,
                email VARCHAR(254) NOT NULL UNIQUE,
                password_hash VARCHAR(255),
                display_name VARCHAR(255) NOT NULL DEFAULT '',
                created BIGINT NOT NULL,
                disabled INTEGER NOT NULL DEFAULT 0
            ){opts}""",
            """CREATE TABLE IF NOT EXISTS sessions (
                token_hash VARCHAR(64) NOT NULL PRIMARY KEY,
                account_id BIGINT NOT NULL,
                created BIGINT NOT NULL,
                expires BIGINT NOT NULL,
                client_address VARCHAR(64) NOT NULL DEFAULT ''
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS sessions_account ON sessions (account_id)",
            "CREATE INDEX IF NOT EXISTS sessions_expires ON sessions (expires)",
            """CREATE TABLE IF NOT EXISTS site_identifiers (
                opaque VARCHAR(64) NOT NULL PRIMARY KEY,
                account_id BIGINT NOT NULL,
                sector VARCHAR(255) NOT NULL,
                created BIGINT NOT NULL,
                last_used BIGINT NOT NULL,
                UNIQUE (account_id, sector)
            ){opts}""",
            """CREATE TABLE IF NOT EXISTS approvals (
                account_id BIGINT NOT NULL,
                realm VARCHAR(512) NOT NULL,
                fields VARCHAR(1024) NOT NULL DEFAULT '',
                created BIGINT NOT NULL,
                last_used BIGINT NOT NULL,
                PRIMARY KEY (account_id, realm(255))
            ){opts}""",
            """CREATE TABLE IF NOT EXISTS openid_associations (
                server_url VARCHAR(255) NOT NULL,
                handle VARCHAR(255) NOT NULL,
                secret BLOB NOT NULL,
                issued BIGINT NOT NULL,
                lifetime BIGINT NOT NULL,
                assoc_type VARCHAR(64) NOT NULL,
                expires BIGINT NOT NULL,
                PRIMARY KEY (server_url, handle)
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS openid_associations_expires "
            "ON openid_associations (expires)",
            """CREATE TABLE IF NOT EXISTS openid_nonces (
                server_url VARCHAR(255) NOT NULL,
                timestamp BIGINT NOT NULL,
                salt VARCHAR(64) NOT NULL,
                PRIMARY KEY (server_url, timestamp, salt)
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS openid_nonces_timestamp ON openid_nonces (timestamp)",
            """CREATE TABLE IF NOT EXISTS signin_failures (
                scope VARCHAR(16) NOT NULL,
                subject VARCHAR(255) NOT NULL,
                window_start BIGINT NOT NULL,
                failures INTEGER NOT NULL,
                PRIMARY KEY (scope, subject)
            ){opts}""",
            """CREATE TABLE IF NOT EXISTS node_metadata (
                name VARCHAR(64) NOT NULL PRIMARY KEY,
                value VARCHAR(255) NOT NULL
            ){opts}""",
        ),
    ),
    Migration(
        2,
        "upstream sign-in: linked provider identities, pending provider logins",
        (
            """CREATE TABLE IF NOT EXISTS upstream_identities (
                id {pk},
                account_id BIGINT NOT NULL,
                provider VARCHAR(64) NOT NULL,
                subject VARCHAR(255) NOT NULL,
                email VARCHAR(254) NOT NULL DEFAULT '',
                email_verified INTEGER NOT NULL DEFAULT 0,
                display_name VARCHAR(255) NOT NULL DEFAULT '',
                claims TEXT NOT NULL,
                created BIGINT NOT NULL,
                last_used BIGINT NOT NULL,
                UNIQUE (provider, subject)
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS upstream_identities_account "
            "ON upstream_identities (account_id)",
            """CREATE TABLE IF NOT EXISTS upstream_pending (
                state_hash VARCHAR(64) NOT NULL PRIMARY KEY,
                browser_hash VARCHAR(64) NOT NULL,
                provider VARCHAR(64) NOT NULL,
                nonce VARCHAR(128) NOT NULL,
                verifier VARCHAR(128) NOT NULL,
                intent VARCHAR(16) NOT NULL,
                account_id BIGINT,
                next_url VARCHAR(2048) NOT NULL,
                created BIGINT NOT NULL,
                used BIGINT NOT NULL DEFAULT 0
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS upstream_pending_created ON upstream_pending (created)",
        ),
    ),
    Migration(
        3,
        "partners: sites, admins, hashed API keys, links, webhook outbox, deletion requests",
        (
            """CREATE TABLE IF NOT EXISTS partner_sites (
                id {pk},
                public_id VARCHAR(32) NOT NULL UNIQUE,
                name VARCHAR(100) NOT NULL,
                logo_url VARCHAR(2048) NOT NULL DEFAULT '',
                realm VARCHAR(512) NOT NULL,
                sector VARCHAR(255) NOT NULL UNIQUE,
                return_to_urls TEXT NOT NULL,
                registration_url VARCHAR(2048) NOT NULL DEFAULT '',
                connect_url VARCHAR(2048) NOT NULL DEFAULT '',
                requested_fields VARCHAR(255) NOT NULL DEFAULT '',
                required_fields VARCHAR(255) NOT NULL DEFAULT '',
                webhook_url VARCHAR(2048) NOT NULL DEFAULT '',
                webhook_secret_version INTEGER NOT NULL DEFAULT 1,
                created BIGINT NOT NULL,
                updated BIGINT NOT NULL
            ){opts}""",
            """CREATE TABLE IF NOT EXISTS partner_admins (
                site_id BIGINT NOT NULL,
                account_id BIGINT NOT NULL,
                created BIGINT NOT NULL,
                PRIMARY KEY (site_id, account_id)
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS partner_admins_account ON partner_admins (account_id)",
            """CREATE TABLE IF NOT EXISTS partner_api_keys (
                id {pk},
                site_id BIGINT NOT NULL,
                key_hash VARCHAR(64) NOT NULL UNIQUE,
                prefix VARCHAR(16) NOT NULL,
                label VARCHAR(100) NOT NULL DEFAULT '',
                created BIGINT NOT NULL,
                created_by BIGINT NOT NULL,
                last_used BIGINT NOT NULL DEFAULT 0,
                revoked BIGINT NOT NULL DEFAULT 0
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS partner_api_keys_site ON partner_api_keys (site_id)",
            """CREATE TABLE IF NOT EXISTS partner_links (
                site_id BIGINT NOT NULL,
                account_id BIGINT NOT NULL,
                opaque VARCHAR(64) NOT NULL,
                outcome VARCHAR(16) NOT NULL,
                created BIGINT NOT NULL,
                last_signin BIGINT NOT NULL,
                PRIMARY KEY (site_id, account_id),
                UNIQUE (site_id, opaque)
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS partner_links_account ON partner_links (account_id)",
            """CREATE TABLE IF NOT EXISTS partner_events (
                id {pk},
                event_id VARCHAR(40) NOT NULL UNIQUE,
                site_id BIGINT NOT NULL,
                subject VARCHAR(64) NOT NULL,
                event_type VARCHAR(32) NOT NULL,
                body TEXT NOT NULL,
                created BIGINT NOT NULL,
                state INTEGER NOT NULL DEFAULT 0,
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt BIGINT NOT NULL,
                lease_until BIGINT NOT NULL DEFAULT 0,
                delivered BIGINT NOT NULL DEFAULT 0,
                last_error VARCHAR(255) NOT NULL DEFAULT ''
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS partner_events_due ON partner_events (state, next_attempt)",
            "CREATE INDEX IF NOT EXISTS partner_events_subject "
            "ON partner_events (site_id, subject, state)",
            """CREATE TABLE IF NOT EXISTS partner_deletion_requests (
                id {pk},
                public_id VARCHAR(32) NOT NULL UNIQUE,
                site_id BIGINT NOT NULL,
                subject VARCHAR(64) NOT NULL,
                requested BIGINT NOT NULL,
                completed BIGINT NOT NULL DEFAULT 0
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS partner_deletion_requests_site "
            "ON partner_deletion_requests (site_id, completed)",
        ),
    ),
    Migration(
        4,
        "partners: realm ownership verification (a token published on the realm's host)",
        (
            """CREATE TABLE IF NOT EXISTS partner_verifications (
                site_id BIGINT NOT NULL PRIMARY KEY,
                token VARCHAR(64) NOT NULL,
                verified BIGINT NOT NULL DEFAULT 0,
                checked BIGINT NOT NULL DEFAULT 0,
                problem VARCHAR(255) NOT NULL DEFAULT ''
            ){opts}""",
        ),
    ),
    Migration(
        5,
        "partners: admin invitations (single-use, expiring; only the token's hash is kept)",
        (
            """CREATE TABLE IF NOT EXISTS partner_invitations (
                id {pk},
                site_id BIGINT NOT NULL,
                token_hash VARCHAR(64) NOT NULL UNIQUE,
                email VARCHAR(254) NOT NULL,
                invited_by BIGINT NOT NULL,
                created BIGINT NOT NULL,
                expires BIGINT NOT NULL,
                UNIQUE (site_id, email)
            ){opts}""",
        ),
    ),
    Migration(
        6,
        "mail: the outbox of messages waiting to be sent, with leases and retries",
        (
            """CREATE TABLE IF NOT EXISTS mail_outbox (
                id {pk},
                message_id VARCHAR(255) NOT NULL UNIQUE,
                recipient VARCHAR(254) NOT NULL,
                kind VARCHAR(64) NOT NULL,
                subject VARCHAR(255) NOT NULL,
                message MEDIUMTEXT NOT NULL,
                created BIGINT NOT NULL,
                state INTEGER NOT NULL DEFAULT 0,
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt BIGINT NOT NULL,
                give_up_at BIGINT NOT NULL,
                lease_until BIGINT NOT NULL DEFAULT 0,
                lease_owner VARCHAR(64) NOT NULL DEFAULT '',
                sent BIGINT NOT NULL DEFAULT 0,
                last_error VARCHAR(255) NOT NULL DEFAULT ''
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS mail_outbox_due ON mail_outbox (state, next_attempt)",
            "CREATE INDEX IF NOT EXISTS mail_outbox_created ON mail_outbox (created)",
        ),
    ),
    Migration(
        7,
        "oidc: signing keys (private keys sealed under the master secret)",
        (
            # current_for and next_for hold the algorithm while the key is
            # current (or next), NULL otherwise: unique, so that two nodes
            # generating or rotating at once leave one key in each role.
            """CREATE TABLE IF NOT EXISTS oidc_signing_keys (
                kid VARCHAR(64) NOT NULL PRIMARY KEY,
                alg VARCHAR(16) NOT NULL,
                state VARCHAR(16) NOT NULL,
                current_for VARCHAR(16) NULL UNIQUE,
                next_for VARCHAR(16) NULL UNIQUE,
                public_jwk VARCHAR(2048) NOT NULL,
                private_key BLOB NOT NULL,
                created BIGINT NOT NULL,
                signs_from BIGINT NOT NULL,
                retired BIGINT NOT NULL DEFAULT 0,
                retire_after BIGINT NOT NULL DEFAULT 0,
                removed BIGINT NOT NULL DEFAULT 0
            ){opts}""",
        ),
    ),
    Migration(
        8,
        "accounts: verified email (existing accounts start unverified), single-use tokens",
        (
            # Every account starts unverified, so no address stays released
            # to partners until its owner proves it; the one exception is an
            # address an upstream provider verified for the account itself.
            "ALTER TABLE accounts ADD COLUMN IF NOT EXISTS "
            "email_verified INTEGER NOT NULL DEFAULT 0",
            "UPDATE accounts SET email_verified = 1 WHERE email_verified = 0 AND EXISTS ("
            "SELECT 1 FROM upstream_identities u WHERE u.account_id = accounts.id "
            "AND u.email = accounts.email AND u.email_verified = 1)",
            # Only a token's SHA-256 is kept; a used one stays until it
            # expires, so a second use is told "already used".
            """CREATE TABLE IF NOT EXISTS account_tokens (
                token_hash VARCHAR(64) NOT NULL PRIMARY KEY,
                account_id BIGINT NOT NULL,
                purpose VARCHAR(16) NOT NULL,
                email VARCHAR(254) NOT NULL DEFAULT '',
                next_url VARCHAR(2048) NOT NULL DEFAULT '',
                created BIGINT NOT NULL,
                expires BIGINT NOT NULL,
                used BIGINT NOT NULL DEFAULT 0
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS account_tokens_account ON account_tokens "
            "(account_id, purpose)",
            "CREATE INDEX IF NOT EXISTS account_tokens_expires ON account_tokens (expires)",
        ),
    ),
    Migration(
        9,
        "accounts: security events, known browsers, session details",
        (
            """CREATE TABLE IF NOT EXISTS security_events (
                id {pk},
                account_id BIGINT NOT NULL,
                kind VARCHAR(32) NOT NULL,
                created BIGINT NOT NULL,
                client_address VARCHAR(64) NOT NULL DEFAULT '',
                browser VARCHAR(128) NOT NULL DEFAULT '',
                detail VARCHAR(255) NOT NULL DEFAULT ''
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS security_events_account "
            "ON security_events (account_id, created)",
            "CREATE INDEX IF NOT EXISTS security_events_created ON security_events (created)",
            """CREATE TABLE IF NOT EXISTS known_browsers (
                account_id BIGINT NOT NULL,
                browser_hash VARCHAR(64) NOT NULL,
                first_seen BIGINT NOT NULL,
                last_seen BIGINT NOT NULL,
                PRIMARY KEY (account_id, browser_hash)
            ){opts}""",
            # Beside sessions rather than new columns of it: a session an
            # older node starts simply has no details (shown as unknown).
            """CREATE TABLE IF NOT EXISTS session_details (
                token_hash VARCHAR(64) NOT NULL PRIMARY KEY,
                account_id BIGINT NOT NULL,
                browser VARCHAR(128) NOT NULL DEFAULT '',
                last_seen BIGINT NOT NULL
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS session_details_account ON session_details (account_id)",
        ),
    ),
    Migration(
        10,
        "oidc: clients per partner site, grants, codes and tokens (only their hashes)",
        (
            """CREATE TABLE IF NOT EXISTS oidc_clients (
                client_id VARCHAR(64) NOT NULL PRIMARY KEY,
                site_id BIGINT NOT NULL,
                secret_hash VARCHAR(64) NOT NULL DEFAULT '',
                is_public INTEGER NOT NULL DEFAULT 0,
                redirect_uris TEXT NOT NULL,
                sector VARCHAR(255) NOT NULL,
                id_token_alg VARCHAR(16) NOT NULL DEFAULT 'RS256',
                scopes VARCHAR(255) NOT NULL DEFAULT 'openid',
                jwks TEXT NULL,
                post_logout_uris TEXT NULL,
                registration_token_hash VARCHAR(64) NOT NULL DEFAULT '',
                created BIGINT NOT NULL
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS oidc_clients_site ON oidc_clients (site_id)",
            # A grant: one consented authorization of a client, and everything
            # issued from it (its code, access and refresh tokens), which a
            # reused code or refresh token revokes at once.
            """CREATE TABLE IF NOT EXISTS oidc_grants (
                grant_id VARCHAR(64) NOT NULL PRIMARY KEY,
                client_id VARCHAR(64) NOT NULL,
                account_id BIGINT NOT NULL,
                subject VARCHAR(64) NOT NULL,
                scopes VARCHAR(255) NOT NULL,
                fields VARCHAR(255) NOT NULL DEFAULT '',
                nonce VARCHAR(512) NOT NULL DEFAULT '',
                openid2_id VARCHAR(255) NOT NULL DEFAULT '',
                auth_time BIGINT NOT NULL,
                created BIGINT NOT NULL,
                expires BIGINT NOT NULL,
                revoked BIGINT NOT NULL DEFAULT 0
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS oidc_grants_account ON oidc_grants (account_id)",
            "CREATE INDEX IF NOT EXISTS oidc_grants_expires ON oidc_grants (expires)",
            """CREATE TABLE IF NOT EXISTS oidc_codes (
                code_hash VARCHAR(64) NOT NULL PRIMARY KEY,
                grant_id VARCHAR(64) NOT NULL,
                redirect_uri VARCHAR(2048) NOT NULL,
                code_challenge VARCHAR(128) NOT NULL DEFAULT '',
                expires BIGINT NOT NULL,
                used BIGINT NOT NULL DEFAULT 0
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS oidc_codes_expires ON oidc_codes (expires)",
            """CREATE TABLE IF NOT EXISTS oidc_tokens (
                token_hash VARCHAR(64) NOT NULL PRIMARY KEY,
                kind VARCHAR(16) NOT NULL,
                grant_id VARCHAR(64) NOT NULL,
                created BIGINT NOT NULL,
                expires BIGINT NOT NULL,
                used BIGINT NOT NULL DEFAULT 0,
                revoked BIGINT NOT NULL DEFAULT 0
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS oidc_tokens_grant ON oidc_tokens (grant_id)",
            "CREATE INDEX IF NOT EXISTS oidc_tokens_expires ON oidc_tokens (expires)",
            # The jti of every private_key_jwt client assertion until it
            # expires: each is accepted once.
            """CREATE TABLE IF NOT EXISTS oidc_client_assertions (
                client_id VARCHAR(64) NOT NULL,
                jti VARCHAR(255) NOT NULL,
                expires BIGINT NOT NULL,
                PRIMARY KEY (client_id, jti)
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS oidc_client_assertions_expires "
            "ON oidc_client_assertions (expires)",
        ),
    ),
    Migration(
        11,
        "mfa: TOTP secrets (sealed), recovery codes (hashed), second steps, "
        "how each session was signed in, trusted browsers",
        (
            # last_step: the TOTP time step last accepted, so no code is good twice.
            """CREATE TABLE IF NOT EXISTS mfa_totp (
                account_id BIGINT NOT NULL PRIMARY KEY,
                secret BLOB NOT NULL,
                confirmed BIGINT NOT NULL DEFAULT 0,
                created BIGINT NOT NULL,
                last_step BIGINT NOT NULL DEFAULT 0
            ){opts}""",
            """CREATE TABLE IF NOT EXISTS mfa_recovery_codes (
                id {pk},
                account_id BIGINT NOT NULL,
                code_hash VARCHAR(64) NOT NULL,
                created BIGINT NOT NULL,
                used BIGINT NOT NULL DEFAULT 0,
                UNIQUE (account_id, code_hash)
            ){opts}""",
            # first_method: how the person proved the first factor (pwd, or
            # fed for a sign-in through an upstream provider).
            """CREATE TABLE IF NOT EXISTS mfa_pending (
                token_hash VARCHAR(64) NOT NULL PRIMARY KEY,
                account_id BIGINT NOT NULL,
                created BIGINT NOT NULL,
                expires BIGINT NOT NULL,
                first_method VARCHAR(16) NOT NULL DEFAULT 'pwd'
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS mfa_pending_expires ON mfa_pending (expires)",
            """CREATE TABLE IF NOT EXISTS mfa_session_auth (
                token_hash VARCHAR(64) NOT NULL PRIMARY KEY,
                account_id BIGINT NOT NULL,
                methods VARCHAR(64) NOT NULL,
                password_time BIGINT NOT NULL,
                factor_time BIGINT NOT NULL DEFAULT 0,
                expires BIGINT NOT NULL
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS mfa_session_auth_expires ON mfa_session_auth (expires)",
            """CREATE TABLE IF NOT EXISTS mfa_trusted_browsers (
                token_hash VARCHAR(64) NOT NULL PRIMARY KEY,
                account_id BIGINT NOT NULL,
                created BIGINT NOT NULL,
                expires BIGINT NOT NULL,
                client_address VARCHAR(64) NOT NULL DEFAULT ''
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS mfa_trusted_account ON mfa_trusted_browsers (account_id)",
        ),
    ),
    Migration(
        12,
        "mfa: WebAuthn security keys and passkeys, their single-use challenges; "
        "partner sites that require a second factor",
        (
            # id_hash: SHA-256 of the credential ID (up to 1023 bytes, too
            # long for a key); passkey: registered as a discoverable
            # credential with user verification; sign_count: the
            # authenticator's counter last seen (one going back is refused).
            """CREATE TABLE IF NOT EXISTS mfa_webauthn_credentials (
                id_hash VARCHAR(64) NOT NULL PRIMARY KEY,
                credential_id BLOB NOT NULL,
                account_id BIGINT NOT NULL,
                public_key BLOB NOT NULL,
                sign_count BIGINT NOT NULL DEFAULT 0,
                transports VARCHAR(255) NOT NULL DEFAULT '',
                name VARCHAR(64) NOT NULL,
                passkey INTEGER NOT NULL DEFAULT 0,
                backup_eligible INTEGER NOT NULL DEFAULT 0,
                backed_up INTEGER NOT NULL DEFAULT 0,
                created BIGINT NOT NULL,
                last_used BIGINT NOT NULL DEFAULT 0
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS mfa_webauthn_account "
            "ON mfa_webauthn_credentials (account_id)",
            # A challenge is good once, for one purpose, in the browser
            # session (binding_hash) it was given to, until it expires.
            """CREATE TABLE IF NOT EXISTS mfa_webauthn_challenges (
                challenge_hash VARCHAR(64) NOT NULL PRIMARY KEY,
                purpose VARCHAR(16) NOT NULL,
                binding_hash VARCHAR(64) NOT NULL,
                account_id BIGINT NOT NULL DEFAULT 0,
                expires BIGINT NOT NULL
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS mfa_webauthn_challenges_expires "
            "ON mfa_webauthn_challenges (expires)",
            # A partner site may require a second factor of everyone who
            # signs in to it.
            "ALTER TABLE partner_sites ADD COLUMN IF NOT EXISTS "
            "require_second_factor INTEGER NOT NULL DEFAULT 0",
        ),
    ),
    Migration(
        13,
        "oidc: back-channel logout (client URIs, the sessions clients signed into, "
        "the logout token outbox); acr and amr of grants; per-client token lifetimes; "
        "the previous secret during a rotation; sector identifier URIs",
        (
            "ALTER TABLE oidc_clients ADD COLUMN IF NOT EXISTS backchannel_logout_uri "
            "VARCHAR(2048) NULL",
            "ALTER TABLE oidc_clients ADD COLUMN IF NOT EXISTS "
            "backchannel_logout_session_required INTEGER NOT NULL DEFAULT 0",
            # Per-client token lifetimes in seconds (0: the provider's default).
            "ALTER TABLE oidc_clients ADD COLUMN IF NOT EXISTS "
            "access_token_lifetime INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE oidc_clients ADD COLUMN IF NOT EXISTS "
            "refresh_token_lifetime INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE oidc_clients ADD COLUMN IF NOT EXISTS "
            "id_token_lifetime INTEGER NOT NULL DEFAULT 0",
            # The URL of the JSON list of the client's redirect URIs whose host
            # is its sector (OpenID Connect Core 8.1), or NULL.
            "ALTER TABLE oidc_clients ADD COLUMN IF NOT EXISTS "
            "sector_identifier_uri VARCHAR(2048) NULL",
            # The secret before the last rotation, good until it expires.
            "ALTER TABLE oidc_clients ADD COLUMN IF NOT EXISTS "
            "previous_secret_hash VARCHAR(64) NOT NULL DEFAULT ''",
            "ALTER TABLE oidc_clients ADD COLUMN IF NOT EXISTS "
            "previous_secret_expires BIGINT NOT NULL DEFAULT 0",
            # The OpenID Connect session id (sid) the grant's ID tokens carry.
            "ALTER TABLE oidc_grants ADD COLUMN IF NOT EXISTS sid VARCHAR(64) NOT NULL DEFAULT ''",
            # How the person had signed in when the grant was given (acr, and
            # amr space-separated), for every ID token issued from it.
            "ALTER TABLE oidc_grants ADD COLUMN IF NOT EXISTS acr VARCHAR(255) NOT NULL DEFAULT ''",
            "ALTER TABLE oidc_grants ADD COLUMN IF NOT EXISTS amr VARCHAR(64) NOT NULL DEFAULT ''",
            # Each session a client with a back-channel logout URI signed
            # into: when the session row is gone (signed out, ended
            # elsewhere, expired, the account deleted), a logout token is
            # queued for the client. No account id: nothing here outlives
            # the session but the notice owed to the partner.
            """CREATE TABLE IF NOT EXISTS oidc_session_clients (
                token_hash VARCHAR(64) NOT NULL,
                client_id VARCHAR(64) NOT NULL,
                sid VARCHAR(64) NOT NULL,
                subject VARCHAR(64) NOT NULL,
                created BIGINT NOT NULL,
                PRIMARY KEY (token_hash, client_id)
            ){opts}""",
            # The durable outbox of logout tokens, leased like partner_events.
            """CREATE TABLE IF NOT EXISTS oidc_logouts (
                id {pk},
                client_id VARCHAR(64) NOT NULL,
                sid VARCHAR(64) NOT NULL,
                subject VARCHAR(64) NOT NULL,
                created BIGINT NOT NULL,
                state INTEGER NOT NULL DEFAULT 0,
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt BIGINT NOT NULL DEFAULT 0,
                lease_until BIGINT NOT NULL DEFAULT 0,
                last_error VARCHAR(255) NOT NULL DEFAULT '',
                delivered BIGINT NOT NULL DEFAULT 0
            ){opts}""",
            "CREATE INDEX IF NOT EXISTS oidc_logouts_due ON oidc_logouts (state, next_attempt)",
            "CREATE INDEX IF NOT EXISTS oidc_logouts_client ON oidc_logouts (client_id)",
        ),
    ),
    Migration(
        14,
        "approvals: the fields a person chose not to share, and 'always ask me for this site'",
        (
            # declined: fields the site asked for and the person left unticked
            # (comma-separated, as fields); always_ask: 1 when the person wants
            # the consent page every time, the approval kept for their records.
            "ALTER TABLE approvals ADD COLUMN IF NOT EXISTS "
            "declined VARCHAR(1024) NOT NULL DEFAULT ''",
            "ALTER TABLE approvals ADD COLUMN IF NOT EXISTS always_ask INTEGER NOT NULL DEFAULT 0",
        ),
    ),
    Migration(
        15,
        "oidc: the session a grant was given in (its refresh tokens end with it); "
        "client names from dynamic registration",
        (
            # The hash of the session token (sessions.token_hash); '' for a
            # grant from before this migration, whose refresh tokens go on.
            "ALTER TABLE oidc_grants ADD COLUMN IF NOT EXISTS "
            "session_hash VARCHAR(64) NOT NULL DEFAULT ''",
            # RFC 7591 client_name, shown on the consent page and the console.
            "ALTER TABLE oidc_clients ADD COLUMN IF NOT EXISTS "
            "client_name VARCHAR(255) NOT NULL DEFAULT ''",
        ),
    ),
    Migration(
        16,
        "mfa: WebAuthn challenges in the order they were given, per browser session",
        (
            # issued: when the challenge was given, in milliseconds, so a
            # session's oldest challenge is the one a new one replaces
            # (several come within a second). 0 for the rows before it:
            # the oldest, as they are.
            "ALTER TABLE mfa_webauthn_challenges ADD COLUMN IF NOT EXISTS "
            "issued BIGINT NOT NULL DEFAULT 0",
            "CREATE INDEX IF NOT EXISTS mfa_webauthn_challenges_binding "
            "ON mfa_webauthn_challenges (binding_hash, issued)",
        ),
    ),
    Migration(
        17,
        "mfa: how the security log names the first factor of a second step",
        (
            # signin_method: "password", or the upstream provider's name, so
            # the sign-in the second step ends is logged as what it was ('':
            # a step an older node started, with a password).
            "ALTER TABLE mfa_pending ADD COLUMN IF NOT EXISTS "
            "signin_method VARCHAR(64) NOT NULL DEFAULT ''",
        ),
    ),
    Migration(
        20,
        "webhooks and back-channel logout: which node holds an outbox row's lease",
        (
            # lease_owner, as in mail_outbox: a node takes the rows still
            # leased to itself again (a claim whose COMMIT a database
            # failover cut off). '' when no lease of this release's is held;
            # a node of the release before leaves it as it found it.
            "ALTER TABLE partner_events ADD COLUMN IF NOT EXISTS "
            "lease_owner VARCHAR(64) NOT NULL DEFAULT ''",
            "ALTER TABLE oidc_logouts ADD COLUMN IF NOT EXISTS "
            "lease_owner VARCHAR(64) NOT NULL DEFAULT ''",
        ),
    ),
)


def _expand(statement: str, tx: Transaction) -> str:
    text = statement.replace("{pk}", tx.dialect.autoincrement_pk).replace(
        "{opts}", tx.dialect.table_options
    )
    if tx.dialect.name == "sqlite":
        # SQLite has no index prefix lengths.
        text = text.replace("realm(255)", "realm")
        # SQLite has no ADD COLUMN IF NOT EXISTS; there a migration is one
        # transaction under the write lock (L{_apply}), so the statement
        # never runs twice.
        text = text.replace("ADD COLUMN IF NOT EXISTS", "ADD COLUMN")
    return text


def compatible_from(migration: Migration, history: tuple[Migration, ...] | None = None) -> int:
    """
    The oldest schema version whose code runs on a database at
    C{migration}'s version: its own C{compatible_from}, or (expand-only)
    the previous migration's, down to 0 before the first.
    """
    value = 0
    for m in MIGRATIONS if history is None else history:
        if m.compatible_from is not None:
            value = m.compatible_from
        if m.version == migration.version:
            return value
    raise ValueError(f"migration {migration.version} is not in the history given")


def _compatibility_table(tx: Transaction) -> None:
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_compatibility ("
        "version INTEGER NOT NULL PRIMARY KEY, compatible_from INTEGER NOT NULL)"
        + tx.dialect.table_options
    )


def oldest_compatible(tx: Transaction, newer_than: int) -> int | None:
    """
    The oldest schema version whose code runs on this database, as the
    migrations past C{newer_than} recorded it (the largest of theirs); None
    when one of them recorded nothing (a release that kept no such record).
    """
    _compatibility_table(tx)
    versions = tx.fetchall("SELECT version FROM schema_version WHERE version > ?", newer_than)
    rows = tx.fetchall(
        "SELECT version, compatible_from FROM schema_compatibility WHERE version > ?", newer_than
    )
    recorded = {int(v): int(c) for v, c in rows}
    if any(int(v) not in recorded for (v,) in versions):
        return None
    return max(recorded.values(), default=0)


def current_version(tx: Transaction) -> int:
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        "version INTEGER NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL, "
        "applied BIGINT NOT NULL)" + tx.dialect.table_options
    )
    version = tx.scalar("SELECT MAX(version) FROM schema_version")
    return int(version or 0)


def _apply(tx: Transaction, migration: Migration, now: int) -> bool:
    # MariaDB commits DDL implicitly, so a migration cannot be one
    # transaction there. Every statement is idempotent (IF NOT EXISTS) and
    # the version row is written last: a migration cut off part-way is
    # simply run again, and two processes starting at once both succeed
    # (the loser's version insert is ignored). SQLite has no ADD COLUMN IF
    # NOT EXISTS, so there a migration is one transaction, taken with the
    # write lock before the version is read: two processes migrating at
    # once queue for the lock, and the second finds the version the first
    # wrote (instead of losing its snapshot at the first ALTER and being
    # run again by the storage, a few times at most).
    tx.take_write_lock()
    if current_version(tx) >= migration.version:
        return False
    for statement in migration.statements:
        tx.execute(_expand(statement, tx))
    # Before the version row, which makes the migration count as applied.
    _compatibility_table(tx)
    tx.execute(
        tx.dialect.insert_ignore()
        + " INTO schema_compatibility (version, compatible_from) VALUES (?, ?)",
        migration.version,
        compatible_from(migration),
    )
    inserted = tx.execute(
        tx.dialect.insert_ignore()
        + " INTO schema_version (version, name, applied) VALUES (?, ?, ?)",
        migration.version,
        migration.name,
        now,
    )
    return inserted > 0


async def migrate(storage: Storage, now: int) -> list[int]:
    """
    Bring the schema up to date and return the versions this call applied
    (none when it already was). Refuse a database whose schema is newer
    than this release knows.
    """
    applied: list[int] = []
    latest = await storage.run(current_version)
    ours = latest_version()
    if latest > ours:
        oldest = await storage.run(oldest_compatible, ours)
        if oldest is None or oldest > ours:
            why = (
                "and a newer migration recorded no compatibility"
                if oldest is None
                else f"and needs code of version {oldest} or later"
            )
            raise SchemaTooNew(
                f"the database schema is version {latest}, newer than this release knows "
                f"({ours}), {why}; upgrade clickpass on this node"
            )
        log.info(
            "the database schema is version {latest}, newer than this release's {ours};"
            " every newer migration admits this release (expand-only): running on it",
            latest=latest,
            ours=ours,
        )
        return applied
    for migration in MIGRATIONS:
        if migration.version <= latest:
            continue
        if await storage.run(_apply, migration, now):
            log.info(
                "applied schema migration {version}: {name}",
                version=migration.version,
                name=migration.name,
            )
            applied.append(migration.version)
    return applied


def latest_version() -> int:
    """The schema version this release brings a database to."""
    return MIGRATIONS[-1].version


class SchemaTooNew(Exception):
    """The database was migrated by a newer release than this one."""
