"""
The second factors' tables, read and written inside transactions the
caller runs (L{clickpass.storage.sql.Storage.run}): TOTP secrets (sealed),
recovery codes (hashed), WebAuthn credentials and their single-use
challenges, second steps waiting for a code, how each session was signed
in, and trusted browsers.

Plain blocking code on the storage's threads: nothing here decides
anything, hashes anything or sends mail.
"""

from __future__ import annotations

from dataclasses import dataclass

from clickpass.storage.sql import Row, Transaction

# The scope of second-factor attempts in the sign-in throttle's table.
THROTTLE_SCOPE = "second-factor"


@dataclass(frozen=True)
class TotpRow:
    """A person's TOTP secret (sealed), and whether it is set up yet."""

    sealed: bytes
    confirmed: int
    last_step: int


@dataclass(frozen=True)
class SessionAuth:
    """
    How the session of a browser was signed in: C{methods} (C{pwd}, then
    C{otp} or C{rc} for a recovery code, or C{trusted} for a trusted
    browser), when the password was checked, and when the second factor
    was (0: never in this session).
    """

    account_id: int
    methods: frozenset[str]
    password_time: int
    factor_time: int


@dataclass(frozen=True)
class TrustedBrowser:
    """A browser a person chose to trust, listed on their account page."""

    ref: str
    created: int
    expires: int
    client_address: str


def totp(tx: Transaction, account_id: int) -> TotpRow | None:
    row = tx.fetchone(
        "SELECT secret, confirmed, last_step FROM mfa_totp WHERE account_id = ?", account_id
    )
    if row is None:
        return None
    return TotpRow(bytes(row[0]), int(row[1]), int(row[2]))


def has_factor(tx: Transaction, account_id: int) -> bool:
    """
    Whether the person has a second factor set up (asked for at sign-in):
    an authenticator app, or a security key or passkey.
    """
    return has_totp(tx, account_id) or has_keys(tx, account_id)


def has_totp(tx: Transaction, account_id: int) -> bool:
    """Whether the person has an authenticator app set up."""
    return (
        tx.fetchone("SELECT 1 FROM mfa_totp WHERE account_id = ? AND confirmed > 0", account_id)
        is not None
    )


def begin_totp(tx: Transaction, account_id: int, sealed: bytes, now: int) -> bool:
    """
    Keep a new secret for C{account_id} until it is confirmed with a code
    (replacing one not confirmed yet); false when one is set up already.
    """
    existing = totp(tx, account_id)
    if existing is not None and existing.confirmed:
        return False
    tx.execute(
        tx.dialect.upsert("mfa_totp", ("account_id", "secret", "created"), ("account_id",)),
        account_id,
        sealed,
        now,
    )
    return True


def confirm_totp(tx: Transaction, account_id: int, step: int, now: int) -> bool:
    """Mark the secret set up, its confirming code's C{step} used; false if it already was."""
    changed = tx.execute(
        "UPDATE mfa_totp SET confirmed = ?, last_step = ? WHERE account_id = ? AND confirmed = 0",
        now,
        step,
        account_id,
    )
    return changed == 1


def use_step(tx: Transaction, account_id: int, step: int) -> bool:
    """Record C{step} as used; false when it (or a later one) already was: a replay."""
    changed = tx.execute(
        "UPDATE mfa_totp SET last_step = ? WHERE account_id = ? AND confirmed > 0 "
        "AND last_step < ?",
        step,
        account_id,
        step,
    )
    return changed == 1


def remove_all(tx: Transaction, account_id: int) -> bool:
    """
    Remove every second factor of C{account_id}: its TOTP secret, security
    keys and passkeys, recovery codes and trusted browsers. True when there
    was a factor set up.
    """
    had = has_factor(tx, account_id)
    tx.execute("DELETE FROM mfa_totp WHERE account_id = ?", account_id)
    tx.execute("DELETE FROM mfa_webauthn_credentials WHERE account_id = ?", account_id)
    tx.execute("DELETE FROM mfa_recovery_codes WHERE account_id = ?", account_id)
    tx.execute("DELETE FROM mfa_trusted_browsers WHERE account_id = ?", account_id)
    return had


def remove_totp(tx: Transaction, account_id: int) -> bool:
    """
    Remove C{account_id}'s TOTP secret; with no security key left either,
    its recovery codes and trusted browsers too. True when one was set up.
    """
    had = has_totp(tx, account_id)
    tx.execute("DELETE FROM mfa_totp WHERE account_id = ?", account_id)
    if not has_keys(tx, account_id):
        forget_factorless(tx, account_id)
    return had


def forget_factorless(tx: Transaction, account_id: int) -> None:
    """Drop the recovery codes and trusted browsers of an account with no factor left."""
    tx.execute("DELETE FROM mfa_recovery_codes WHERE account_id = ?", account_id)
    tx.execute("DELETE FROM mfa_trusted_browsers WHERE account_id = ?", account_id)


def replace_recovery_codes(
    tx: Transaction, account_id: int, code_hashes: list[str], now: int
) -> None:
    tx.execute("DELETE FROM mfa_recovery_codes WHERE account_id = ?", account_id)
    for code_hash in code_hashes:
        tx.execute(
            "INSERT INTO mfa_recovery_codes (account_id, code_hash, created) VALUES (?, ?, ?)",
            account_id,
            code_hash,
            now,
        )


def recovery_codes_left(tx: Transaction, account_id: int) -> int:
    return int(
        tx.scalar(
            "SELECT COUNT(*) FROM mfa_recovery_codes WHERE account_id = ? AND used = 0",
            account_id,
        )
        or 0
    )


def use_recovery_code(tx: Transaction, account_id: int, code_hash: str, now: int) -> bool:
    """Spend one recovery code; false when it is not one of theirs or was used."""
    changed = tx.execute(
        "UPDATE mfa_recovery_codes SET used = ? WHERE account_id = ? AND code_hash = ? "
        "AND used = 0",
        now,
        account_id,
        code_hash,
    )
    return changed == 1


def reset_failures(tx: Transaction, account_id: int) -> None:
    tx.execute(
        "UPDATE signin_failures SET failures = 0 WHERE scope = ? AND subject = ?",
        THROTTLE_SCOPE,
        str(account_id),
    )


# Second steps: a correct password, waiting for a code.


def start_pending(
    tx: Transaction,
    token_hash: str,
    account_id: int,
    now: int,
    expires: int,
    first_method: str,
    signin_method: str = "password",
) -> None:
    tx.execute(
        "INSERT INTO mfa_pending (token_hash, account_id, created, expires, first_method, "
        "signin_method) VALUES (?, ?, ?, ?, ?, ?)",
        token_hash,
        account_id,
        now,
        expires,
        first_method,
        signin_method[:64],
    )


@dataclass(frozen=True)
class PendingStep:
    """A second step still open: whose, when and how the first factor was given."""

    account_id: int
    first_time: int
    first_method: str
    # How the security log names the first factor: "password", or the
    # upstream provider's name.
    signin_method: str = "password"


def pending(tx: Transaction, token_hash: str, now: int) -> PendingStep | None:
    """The second step of C{token_hash} if it is still open, or L{None}."""
    row = tx.fetchone(
        "SELECT account_id, created, first_method, signin_method FROM mfa_pending "
        "WHERE token_hash = ? AND expires > ?",
        token_hash,
        now,
    )
    if row is None:
        return None
    # A step an older node started has no name for the log: say what it knows.
    named = str(row[3]) or ("password" if str(row[2]) == "pwd" else "upstream provider")
    return PendingStep(int(row[0]), int(row[1]), str(row[2]), named)


def end_pending(tx: Transaction, token_hash: str) -> None:
    tx.execute("DELETE FROM mfa_pending WHERE token_hash = ?", token_hash)


def has_password(tx: Transaction, account_id: int) -> bool:
    """Whether the account has a password (one made through a provider may have none)."""
    row = tx.fetchone("SELECT password_hash FROM accounts WHERE id = ?", account_id)
    return row is not None and row[0] is not None


# How sessions were signed in.


def record_session(
    tx: Transaction,
    token_hash: str,
    account_id: int,
    methods: frozenset[str],
    password_time: int,
    factor_time: int,
    expires: int,
) -> None:
    tx.execute(
        tx.dialect.upsert(
            "mfa_session_auth",
            ("token_hash", "account_id", "methods", "password_time", "factor_time", "expires"),
            ("token_hash",),
        ),
        token_hash,
        account_id,
        " ".join(sorted(methods)),
        password_time,
        factor_time,
        expires,
    )


def session_auth(tx: Transaction, token_hash: str, now: int) -> SessionAuth | None:
    """
    How a live session was signed in. A session with no record of ours was
    signed in with a password alone, when it started (sign-in rotates the
    token, so the session's creation is the password's time).
    """
    row = tx.fetchone(
        "SELECT s.account_id, s.created, m.methods, m.password_time, m.factor_time "
        "FROM sessions s LEFT JOIN mfa_session_auth m ON m.token_hash = s.token_hash "
        "WHERE s.token_hash = ? AND s.expires > ?",
        token_hash,
        now,
    )
    if row is None:
        return None
    if row[2] is None:
        return SessionAuth(int(row[0]), frozenset({"pwd"}), int(row[1]), 0)
    return SessionAuth(int(row[0]), frozenset(str(row[2]).split()), int(row[3]), int(row[4]))


# Trusted browsers.


def trust_browser(
    tx: Transaction, token_hash: str, account_id: int, now: int, expires: int, address: str
) -> None:
    tx.execute(
        "INSERT INTO mfa_trusted_browsers (token_hash, account_id, created, expires, "
        "client_address) VALUES (?, ?, ?, ?, ?)",
        token_hash,
        account_id,
        now,
        expires,
        address[:64],
    )


def is_trusted(tx: Transaction, token_hash: str, account_id: int, now: int) -> bool:
    return (
        tx.fetchone(
            "SELECT 1 FROM mfa_trusted_browsers WHERE token_hash = ? AND account_id = ? "
            "AND expires > ?",
            token_hash,
            account_id,
            now,
        )
        is not None
    )


def trusted_browsers(tx: Transaction, account_id: int, now: int) -> list[TrustedBrowser]:
    rows = tx.fetchall(
        "SELECT token_hash, created, expires, client_address FROM mfa_trusted_browsers "
        "WHERE account_id = ? AND expires > ? ORDER BY created",
        account_id,
        now,
    )
    # The reference a revoke form names: a prefix of the hash, never the token.
    return [TrustedBrowser(str(r[0])[:16], int(r[1]), int(r[2]), str(r[3])) for r in rows]


def revoke_browser(tx: Transaction, account_id: int, ref: str) -> bool:
    if len(ref) != 16 or not all(c in "0123456789abcdef" for c in ref):
        return False
    changed = tx.execute(
        "DELETE FROM mfa_trusted_browsers WHERE account_id = ? AND token_hash LIKE ?",
        account_id,
        ref + "%",
    )
    return changed > 0


def expire(tx: Transaction, now: int) -> int:
    """Delete second steps, session records, trusted browsers and challenges past their time."""
    count = 0
    for table in (
        "mfa_pending",
        "mfa_session_auth",
        "mfa_trusted_browsers",
        "mfa_webauthn_challenges",
    ):
        count += tx.execute(f"DELETE FROM {table} WHERE expires <= ?", now)
    return count


def account_by_email(tx: Transaction, email: str) -> tuple[int, str] | None:
    """The id and stored email of the account with C{email} (normalised), or L{None}."""
    row = tx.fetchone("SELECT id, email FROM accounts WHERE email = ?", email)
    return None if row is None else (int(row[0]), str(row[1]))


def confirmed_since(tx: Transaction, account_id: int) -> int:
    """When the person's TOTP secret was set up (0: it is not)."""
    return int(tx.scalar("SELECT confirmed FROM mfa_totp WHERE account_id = ?", account_id) or 0)


# WebAuthn: security keys and passkeys, and their challenges.


@dataclass(frozen=True)
class Credential:
    """
    A person's security key or passkey: C{ref} (a prefix of its ID's hash)
    names it in forms; C{passkey} when it was registered to sign in
    without a password.
    """

    ref: str
    credential_id: bytes
    account_id: int
    public_key: bytes
    sign_count: int
    transports: tuple[str, ...]
    name: str
    passkey: bool
    backup_eligible: bool
    backed_up: bool
    created: int
    last_used: int


_CREDENTIAL_COLUMNS = (
    "id_hash, credential_id, account_id, public_key, sign_count, transports, name, passkey, "
    "backup_eligible, backed_up, created, last_used"
)


def _credential(row: Row) -> Credential:
    return Credential(
        str(row[0])[:16],
        bytes(row[1]),
        int(row[2]),
        bytes(row[3]),
        int(row[4]),
        tuple(str(row[5]).split()),
        str(row[6]),
        bool(row[7]),
        bool(row[8]),
        bool(row[9]),
        int(row[10]),
        int(row[11]),
    )


def has_keys(tx: Transaction, account_id: int) -> bool:
    return (
        tx.fetchone("SELECT 1 FROM mfa_webauthn_credentials WHERE account_id = ?", account_id)
        is not None
    )


def has_device_keys(tx: Transaction, account_id: int) -> bool:
    """Whether C{account_id} has a key bound to one device (neither backup flag ever set)."""
    return (
        tx.fetchone(
            "SELECT 1 FROM mfa_webauthn_credentials "
            "WHERE account_id = ? AND backup_eligible = 0 AND backed_up = 0",
            account_id,
        )
        is not None
    )


def credentials(tx: Transaction, account_id: int) -> list[Credential]:
    rows = tx.fetchall(
        f"SELECT {_CREDENTIAL_COLUMNS} FROM mfa_webauthn_credentials "
        "WHERE account_id = ? ORDER BY created, id_hash",
        account_id,
    )
    return [_credential(r) for r in rows]


def credential(tx: Transaction, id_hash: str) -> Credential | None:
    row = tx.fetchone(
        f"SELECT {_CREDENTIAL_COLUMNS} FROM mfa_webauthn_credentials WHERE id_hash = ?", id_hash
    )
    return None if row is None else _credential(row)


def add_credential(
    tx: Transaction,
    id_hash: str,
    credential_id: bytes,
    account_id: int,
    public_key: bytes,
    sign_count: int,
    transports: tuple[str, ...],
    name: str,
    passkey: bool,
    backup_eligible: bool,
    backed_up: bool,
    now: int,
) -> bool:
    """Store a new credential; false when its ID is registered already (to anyone)."""
    if credential(tx, id_hash) is not None:
        return False
    tx.execute(
        "INSERT INTO mfa_webauthn_credentials (id_hash, credential_id, account_id, public_key, "
        "sign_count, transports, name, passkey, backup_eligible, backed_up, created, last_used) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
        id_hash,
        credential_id,
        account_id,
        public_key,
        sign_count,
        " ".join(transports),
        name,
        int(passkey),
        int(backup_eligible),
        int(backed_up),
        now,
    )
    return True


def use_credential(
    tx: Transaction, id_hash: str, stored_count: int, sign_count: int, backed_up: bool, now: int
) -> bool:
    """
    Record a use: the new counter, backup state and time; false when the
    counter moved meanwhile (another sign-in with the same key won a race).
    """
    changed = tx.execute(
        "UPDATE mfa_webauthn_credentials SET sign_count = ?, backed_up = ?, last_used = ? "
        "WHERE id_hash = ? AND sign_count = ?",
        sign_count,
        int(backed_up),
        now,
        id_hash,
        stored_count,
    )
    return changed == 1


def remove_credential(tx: Transaction, account_id: int, ref: str) -> str | None:
    """Remove the credential C{ref} of C{account_id}; its name, or L{None} if none such."""
    if len(ref) != 16 or not all(c in "0123456789abcdef" for c in ref):
        return None
    row = tx.fetchone(
        "SELECT id_hash, name FROM mfa_webauthn_credentials "
        "WHERE account_id = ? AND id_hash LIKE ?",
        account_id,
        ref + "%",
    )
    if row is None:
        return None
    tx.execute("DELETE FROM mfa_webauthn_credentials WHERE id_hash = ?", str(row[0]))
    if not has_factor(tx, account_id):
        forget_factorless(tx, account_id)
    return str(row[1])


def start_challenge(
    tx: Transaction,
    challenge_hash: str,
    purpose: str,
    binding_hash: str,
    account_id: int,
    expires: int,
    issued_ms: int,
    keep: int,
) -> int:
    """
    Keep a new challenge given to the browser session C{binding_hash}, and
    forget that session's oldest ones past the newest C{keep}: however
    often its pages ask, a session holds at most C{keep}. How many were
    forgotten.
    """
    tx.execute(
        "INSERT INTO mfa_webauthn_challenges (challenge_hash, purpose, binding_hash, "
        "account_id, expires, issued) VALUES (?, ?, ?, ?, ?, ?)",
        challenge_hash,
        purpose,
        binding_hash,
        account_id,
        expires,
        issued_ms,
    )
    # LIMIT with OFFSET, then a DELETE by key: SQLite has no DELETE ... LIMIT.
    older = tx.fetchall(
        "SELECT challenge_hash FROM mfa_webauthn_challenges WHERE binding_hash = ? "
        "ORDER BY issued DESC, challenge_hash DESC LIMIT 1000 OFFSET ?",
        binding_hash,
        keep,
    )
    for (old,) in older:
        tx.execute("DELETE FROM mfa_webauthn_challenges WHERE challenge_hash = ?", str(old))
    return len(older)


def spend_challenge(
    tx: Transaction, challenge_hash: str, purpose: str, binding_hash: str, now: int
) -> int | None:
    """
    Spend a challenge given for C{purpose} to the browser session
    C{binding_hash}: the account it was given for (0: anyone's passkey),
    or L{None} when there is no such live challenge (unknown, used,
    expired, another purpose or another session's). Spent either way.
    """
    row = tx.fetchone(
        "SELECT purpose, binding_hash, account_id, expires FROM mfa_webauthn_challenges "
        "WHERE challenge_hash = ?",
        challenge_hash,
    )
    if row is None:
        return None
    if (
        tx.execute("DELETE FROM mfa_webauthn_challenges WHERE challenge_hash = ?", challenge_hash)
        != 1
    ):
        return None
    if str(row[0]) != purpose or str(row[1]) != binding_hash or int(row[3]) <= now:
        return None
    return int(row[2])
