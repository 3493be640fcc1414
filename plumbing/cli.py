"""What every command line here shares: one-line errors and exit codes (0 ok, 1 data, 2 usage)."""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from plumbing.errors import DataError, UsageError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 2 (no usage dump)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _number(kind, low, *, strict: bool):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < low or (strict and value == low):
            bound = f"> {low}" if strict else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


positive_int = _number(int, 1, strict=False)
non_negative_int = _number(int, 0, strict=False)
positive_float = _number(float, 0.0, strict=True)
non_negative_float = _number(float, 0.0, strict=False)


def run_main(main: Callable[[list[str] | None], int], prog: str, argv=None) -> int:
    """Run `main`, turning the project's errors into one line and an exit code, never a traceback."""
    try:
        return main(argv)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; outputs left as they were before this run", file=sys.stderr)
        return 130
    except OSError as e:  # unwritable folder, full disk: name the file, no traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"{prog}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


def read_yaml_or_json(path: str, flag: str):
    """The parsed content of a .yaml/.yml/.json file given to `flag`; any problem is a UsageError."""
    if not path.endswith((".yaml", ".yml", ".json")):
        raise UsageError(f"{flag} {path}: expected a .yaml, .yml or .json file")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{flag} {path}: cannot read ({e})") from None
    try:
        if path.endswith(".json"):
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - JSON or YAML syntax error
        raise UsageError(f"{flag} {path}: cannot parse ({str(e).splitlines()[0]})") from None


# where each kind of URL takes its credentials instead of the URL itself
_CREDENTIALS_GO = {
    "--warm-start": "the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                    "GOOGLE_APPLICATION_CREDENTIALS) or the provider's credentials file",
    "--experiment": "the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                    "GOOGLE_APPLICATION_CREDENTIALS) or the provider's credentials file",
    "--storage": "the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                 "GOOGLE_APPLICATION_CREDENTIALS) or the provider's credentials file",
    "--mlflow": "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)",
    "--optuna-storage": "the database client's own files or environment (~/.pgpass or "
                        "PGPASSWORD for PostgreSQL, an option file for MySQL)",
}
# scheme://user:PASSWORD@ (the password may hold '/', as AWS secret keys do: up to the last '@'
# before the query)
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*):[^?#]*@")
_SECRET_QUERY_KEYS = ("access_key", "secret_key", "session_token", "password", "token")


def refuse_secrets(flag: str, url: str | None) -> None:
    """A UsageError if `url` carries a secret (user:password@, or a key in its query string):
    it would be printed, logged by Ray and stored with the experiment. The message names the
    flag and where credentials go, and never repeats the secret."""
    if not url or "://" not in url:
        return
    from urllib.parse import parse_qsl, urlsplit

    password = _USERINFO.match(url) is not None
    in_query = [k for k, _ in parse_qsl(urlsplit(url).query) if k.lower() in _SECRET_QUERY_KEYS]
    if password or in_query:
        what = "a password" if password else ", ".join(in_query)
        raise UsageError(f"{flag} {redact(url)}: the URL carries {what}, which would be printed "
                         f"and stored with the experiment; give credentials through "
                         f"{_CREDENTIALS_GO.get(flag, 'the environment')}")


def redact(url: str) -> str:
    """`url` with any password and secret query value replaced by ***, for printing."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    if "://" not in url:
        return url
    url = _USERINFO.sub(r"\1:***@", url)
    parts = urlsplit(url)
    if not any(k.lower() in _SECRET_QUERY_KEYS for k, _ in parse_qsl(parts.query)):
        return url  # (urlunsplit would also rewrite sqlite://// paths)
    query = urlencode([(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*/:")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
