"""Users of the chat app: bcrypt password hashes and the patients each user may see.

The users file (``settings.users_file``, default ``<home>/users.json``) looks like::

    {"users": {"alice": {"password_hash": "$2b$12$...", "allowed_patients": null},
               "bob":   {"password_hash": "$2b$12$...", "allowed_patients": ["p1", "p2"]}}}

``allowed_patients: null`` means every patient; a list restricts retrieval to those patients (the app
intersects the requested scope with it before retrieval, see ``Scope.restrict_to``). Passwords are
never stored or logged in clear, and the CLI never takes one as a plain argument (it would end up in
the shell history and in ``ps``): it reads ``--password-file``, the variable ``CRAG_NEW_PASSWORD`` or
an interactive prompt. The file is written atomically with mode 0600.

Login rule (``require_login``): an app bound to anything but loopback must have users; with a users
file that has users, login is required on every host.

CLI::

    python -m rag.auth add-user alice [--patients ID,ID] [--password-file FILE]
    python -m rag.auth list-users
    python -m rag.auth remove-user alice
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import getpass
import ipaddress
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import bcrypt

from rag.config import load_settings

PASSWORD_ENV = "CRAG_NEW_PASSWORD"
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_BYTES = 72  # bcrypt's limit; bcrypt 5 refuses longer input instead of truncating it
BCRYPT_ROUNDS = 12
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class AuthError(ValueError):
    """A users-file problem the operator can fix (bad name, weak password, unreadable file)."""


class LoginRequiredError(SystemExit):
    """Raised at app start when it would listen beyond loopback without any user configured."""

    def __init__(self, message: str) -> None:
        super().__init__(message)  # SystemExit prints the message and exits with status 1
        self.message = message

    def __str__(self) -> str:
        return self.message


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """Checked when the user does not exist, so an unknown name costs as much time as a known one."""
    return bcrypt.hashpw(b"not-a-password", bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode("ascii")


# --- file ---------------------------------------------------------------------------------------
def load_users(path: str | Path) -> dict[str, dict]:
    """``{name: {"password_hash": ..., "allowed_patients": ...}}``; empty when the file is absent."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AuthError(f"cannot read users file {path}: {exc}") from None
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise AuthError(f"users file {path}: expected {{\"users\": {{name: {{...}}}}}}")
    return users


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<users file>.lock`` so two ``add-user`` runs cannot lose an update."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _write_users(path: Path, users: dict[str, dict]) -> None:
    """Atomic replace: a temporary file (0600) in the same folder, fsync, rename."""
    blob = json.dumps({"users": users}, indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.chmod(path, 0o600)


def _check_password(password: str) -> bytes:
    raw = password.encode("utf-8")
    if len(password) < MIN_PASSWORD_CHARS:
        raise AuthError(f"password too short: use at least {MIN_PASSWORD_CHARS} characters")
    if len(raw) > MAX_PASSWORD_BYTES:
        raise AuthError(f"password too long: bcrypt uses at most {MAX_PASSWORD_BYTES} bytes (UTF-8)")
    return raw


def add_user(
    path: str | Path,
    name: str,
    password: str,
    allowed_patients: Sequence[str] | None = None,
    *,
    rounds: int = BCRYPT_ROUNDS,
) -> None:
    """Create or update ``name`` (an existing user gets the new password and patient list)."""
    path = Path(path)
    if not _USERNAME.match(name or ""):
        raise AuthError(f"invalid user name {name!r}: letters, digits and . _ @ - (at most 64), starting alnum")
    raw = _check_password(password)
    patients = None
    if allowed_patients is not None:
        patients = [p.strip() for p in allowed_patients if p and p.strip()]
        patients = list(dict.fromkeys(patients))
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    with _locked(path):
        users = load_users(path)
        users[name] = {
            "password_hash": bcrypt.hashpw(raw, bcrypt.gensalt(rounds=rounds)).decode("ascii"),
            "allowed_patients": patients,
        }
        _write_users(path, users)


def remove_user(path: str | Path, name: str) -> bool:
    path = Path(path)
    if not path.is_file():
        return False
    with _locked(path):
        users = load_users(path)
        if name not in users:
            return False
        del users[name]
        _write_users(path, users)
    return True


# --- checks -------------------------------------------------------------------------------------
def verify(path: str | Path, name: str, password: str) -> bool:
    """True when ``name`` exists and ``password`` matches; the same bcrypt work either way."""
    try:
        users = load_users(path)
    except AuthError:
        return False
    entry = users.get(name) if isinstance(name, str) else None
    stored = entry.get("password_hash") if isinstance(entry, dict) else None
    if not isinstance(stored, str):
        stored = None
    candidate = (password or "").encode("utf-8")[:MAX_PASSWORD_BYTES]
    try:
        ok = bcrypt.checkpw(candidate, (stored or _dummy_hash()).encode("ascii"))
    except ValueError:  # a corrupt hash in the file
        return False
    return ok and stored is not None


def allowed_patients(path: str | Path | None, name: str | None) -> list[str] | None:
    """The patients ``name`` may see: ``None`` = all.

    Without any configured users (local single-user mode) everything is allowed. With users, an
    unknown name gets an empty list (sees nothing): access fails closed.
    """
    users = load_users(path) if path else {}
    if not users:
        return None
    entry = users.get(name or "")
    if not isinstance(entry, dict):
        return []
    patients = entry.get("allowed_patients")
    if patients is None:
        return None
    return [str(p) for p in patients]


def is_loopback(host: str | None) -> bool:
    """``127.0.0.0/8``, ``::1`` and ``localhost``; ``0.0.0.0``/``::``/empty/any other name are not."""
    if not host:
        return False
    h = host.strip().strip("[]").lower()
    if h in {"localhost", "localhost.localdomain", "ip6-localhost"}:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def require_login(host: str, users_file: str | Path | None) -> bool:
    """The app's start rule; returns whether login is required.

    Raises :class:`LoginRequiredError` (a ``SystemExit``) when binding to a non-loopback address with
    no users configured: the app would otherwise serve patient records to the network without login.
    """
    try:
        users = load_users(users_file) if users_file else {}
    except AuthError as exc:
        raise LoginRequiredError(f"Refusing to start: {exc}") from None
    if users:
        return True
    if not is_loopback(host):
        raise LoginRequiredError(
            f"Refusing to start: host {host!r} is reachable from other machines, but no users are "
            f"configured in {users_file}. Login is required beyond loopback. Create a user with\n"
            f"    python -m rag.auth add-user NAME [--patients ID,ID]\n"
            f"or bind to 127.0.0.1 (--host 127.0.0.1)."
        )
    return False


# --- CLI ----------------------------------------------------------------------------------------
def _read_new_password(password_file: str | None) -> str:
    if password_file:
        text = Path(password_file).read_text(encoding="utf-8")
        return text.splitlines()[0] if text.splitlines() else ""
    env = os.environ.get(PASSWORD_ENV)
    if env is not None:
        return env
    if not sys.stdin.isatty():
        raise AuthError(f"no password given: use --password-file FILE, set {PASSWORD_ENV}, or run in a terminal")
    first = getpass.getpass("New password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise AuthError("the two passwords differ")
    return first


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rag.auth", description="Manage chat app users.")
    parser.add_argument("--users-file", default=None, help="default: settings.users_file (<home>/users.json)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add = sub.add_parser("add-user", help="create a user or change password/patients")
    add.add_argument("name")
    add.add_argument("--patients", default=None, help="comma-separated patient ids this user may see (default: all)")
    add.add_argument("--password-file", default=None,
                     help=f"read the password from the first line of this file (else ${PASSWORD_ENV}, else a prompt)")
    sub.add_parser("list-users", help="names and allowed patients (no hashes)")
    rm = sub.add_parser("remove-user")
    rm.add_argument("name")
    args = parser.parse_args(list(argv) if argv is not None else None)

    path = Path(args.users_file) if args.users_file else Path(load_settings().users_file)
    try:
        if args.cmd == "add-user":
            patients = [p for p in args.patients.split(",")] if args.patients is not None else None
            add_user(path, args.name, _read_new_password(args.password_file), patients)
            scope = "all patients" if patients is None else f"{len(patients)} patient(s)"
            print(f"user {args.name!r} saved in {path} (may see {scope})")
        elif args.cmd == "list-users":
            for name, entry in sorted(load_users(path).items()):
                pats = entry.get("allowed_patients")
                print(f"{name}\t{'all' if pats is None else ','.join(pats)}")
        elif args.cmd == "remove-user":
            if not remove_user(path, args.name):
                print(f"no user {args.name!r} in {path}", file=sys.stderr)
                return 1
            print(f"user {args.name!r} removed from {path}")
    except (AuthError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
