"""`forgebuild keys`: this workspace's signing key for the remote."""
from __future__ import annotations

from forgebuild.cli.session import Session


def cmd_keys(args, session: Session, report) -> int:
    """The public key other workspaces put in their `[forge] trusted_keys`; the private key stays here."""
    from forgebuild.store import signing

    ws = session.workspace
    public = signing.public_line(signing.load_or_make(ws.dir))
    where = ws.display(signing.private_path(ws.dir))
    if args.json:
        report({"event": "summary", "ok": True, "public_key": public, "private_key": where})
    else:
        print(public)
        if not args.quiet:
            print(f"# private key: {where} (stays on this machine: never pushed, never cached)")
    return 0
