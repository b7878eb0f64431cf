"""``streamqueue dashboard``: its options and the command (the app is ``streamqueue.dashboard``)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from streamqueue.cli.options import CliError, Options, UsageError, port_number, queue_names
from streamqueue.cli.runtime import connect, database_name
from streamqueue.exitcodes import ExitCode

DASHBOARD_EPILOG = """\
examples:
  streamqueue dashboard --uri "$URI" --db app                   # http://127.0.0.1:8080/
  streamqueue dashboard --db app --queue emails --read-only --host 0.0.0.0
  STREAMQUEUE_DASHBOARD_SECRET=... streamqueue dashboard --db app --auth token --host 0.0.0.0
  streamqueue dashboard --db app --auth basic --auth-file /run/secrets/dashboard  # user:password

It listens on 127.0.0.1 unless told otherwise, and refuses any other address
without --auth or --read-only. The secret never goes on the command line: it
comes from STREAMQUEUE_DASHBOARD_SECRET or the first line of --auth-file.
"""


def add_dashboard_command(commands: Any, subparser: Any, log_option: Any) -> None:
    parser = subparser(commands, "dashboard", "serve the web dashboard", DASHBOARD_EPILOG)
    opts = Options(parser)
    opts.add("--uri", env="URI", required=True, secret=True, metavar="URI",
             help="MongoDB connection string (a replica set, for live updates)")
    opts.add("--db", env="DB", metavar="DB", help="database; default: the one named in the URI")
    opts.add("--queue", env="QUEUE", convert=queue_names, append=True, metavar="NAME",
             help="show only these queues (repeat or comma-separate); default: every "
                  "queue in the database")
    opts.add("--host", env="DASHBOARD_HOST", default="127.0.0.1", metavar="ADDR",
             help="address to listen on; beyond this machine only with --auth or --read-only")
    opts.add("--port", env="DASHBOARD_PORT", convert=port_number, default=8080, metavar="PORT",
             help="port to listen on")
    opts.flag("--read-only", env="DASHBOARD_READ_ONLY",
              help="show no action controls and refuse every change")
    parser.add_argument("--auth", type=auth_scheme, metavar="{token,basic}",
                        help="require a token (login form, or Authorization: Bearer) or basic "
                             "auth (secret user:password); the secret comes from "
                             "STREAMQUEUE_DASHBOARD_SECRET or --auth-file")
    parser.add_argument("--auth-file", metavar="PATH",
                        help="read the secret from the first line of this file")
    opts.add("--server-timeout", env="SERVER_TIMEOUT", convert=float, default=5.0,
             metavar="SECONDS", help="give up on an unreachable server after this long")
    log_option(opts, "INFO")
    parser.set_defaults(run=cmd_dashboard)


def auth_scheme(text: str) -> str:
    """``token`` or ``basic``; anything else is refused without echoing it (it may be a secret)."""
    if text in ("token", "basic"):
        return text
    raise argparse.ArgumentTypeError(
        "must be token or basic; the secret itself comes from STREAMQUEUE_DASHBOARD_SECRET "
        "or --auth-file, never from the command line")


def cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        from streamqueue.dashboard.auth import Authenticator, load_secret
        from streamqueue.dashboard.config import DashboardConfig, check_bind
        from streamqueue.dashboard.server import serve
    except ImportError as exc:
        raise CliError(f"the dashboard needs its extra: pip install 'streamqueue[dashboard]' "
                       f"(missing: {exc.name})", ExitCode.CONFIG) from None
    if args.auth_file is not None and args.auth is None:
        raise UsageError("--auth-file needs --auth token or --auth basic")
    auth = None if args.auth is None else Authenticator(
        args.auth, load_secret(args.auth_file, os.environ))
    check_bind(args.host, auth=auth is not None, read_only=args.read_only)
    config = DashboardConfig(db=database_name(args), queues=tuple(args.queue or ()),
                             read_only=args.read_only, auth=auth, host=args.host, port=args.port)
    client = connect(args.uri, args.server_timeout, "streamqueue-dashboard")
    try:
        serve(client, config)
    finally:
        client.close()
    return ExitCode.OK
