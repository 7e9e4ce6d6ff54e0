"""``factory serve``: the CLI hook (kept light: FastAPI and uvicorn are imported only when serving)."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    """Register ``factory serve`` on the CLI's sub-parsers."""
    p = sub.add_parser("serve", help="serve the champion under FACTORY_HOME over HTTP (FastAPI + uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--home", help="FACTORY_HOME (default ./.factory_home)")
    from factory_assets.platform.settings import SOURCE_NAMES

    p.add_argument("--source", choices=SOURCE_NAMES, help="FACTORY_SOURCE (default simulator)")
    p.add_argument("--landing", help="write impression events into this folder-source landing directory")
    p.add_argument("--poll-interval", type=float, default=None, help="alias polling period in seconds (default 1)")
    p.add_argument("--log-level", default="info")


def main(args) -> int:
    """``factory serve``: configuration from the environment, overridden by the flags."""
    import sys

    from factory_assets.serving.app import ServiceConfig, serve
    from factory_assets.platform.settings import SettingsError

    try:
        config = ServiceConfig.from_env(
            home=Path(args.home).expanduser().resolve() if args.home else None,
            source=args.source,
            landing_dir=Path(args.landing).expanduser().resolve() if args.landing else None,
            poll_interval_s=args.poll_interval,
        )
        config.layout.check_format()  # an older home: refused, not served as "no champion"
    except SettingsError as exc:  # a bad FACTORY_* variable or an old home: one line, not a traceback
        print(f"factory serve: {exc}", file=sys.stderr)
        return 2
    return serve(args.host, args.port, config, args.log_level)
