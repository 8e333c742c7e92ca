"""`workbench fqdn cache list`: the names the lab's DNS proxy learnt (Cilium's `cilium fqdn cache list`)."""

from __future__ import annotations

import argparse
from typing import Any

from workbench.cli.commands import TableResult, add_lab_flag, add_table_flags, table_result
from workbench.client.lab import Lab


def _cache_list(args: argparse.Namespace) -> TableResult:
    return table_result(args, Lab(args.lab).fqdn_cache, empty_text="(no names learnt: no DNS answer passed the proxy)")


def register(sub: Any) -> None:
    fqdn = sub.add_parser("fqdn", help="names learnt by the DNS proxy (toFQDNs)")
    fqdn_sub = fqdn.add_subparsers(dest="fqdn_command", metavar="SUBCOMMAND")
    fqdn_sub.required = True
    cache = fqdn_sub.add_parser("cache", help="the FQDN cache")
    cache_sub = cache.add_subparsers(dest="fqdn_cache_command", metavar="SUBCOMMAND")
    cache_sub.required = True
    listing = cache_sub.add_parser("list", help="name, IP, TTL, expiry and toFQDNs identity of every learnt address")
    add_lab_flag(listing)
    add_table_flags(listing)
    listing.set_defaults(func=_cache_list)
