"""Demo private code: modules of an invented firm's in-house ledger library (`halvard`), written in
its own idioms, which no public model saw. Replace them with your own files: the Forgefile says where.

    python3 scripts/make_private.py --seed 5 --count 600 --out OUT    # OUT/module_NNNN.py.txt, one module each
"""
from __future__ import annotations

import argparse
import os
import random

ACCOUNTS = ["accruals", "payables", "receivables", "treasury", "payroll", "suspense", "fx_gains", "rebates",
            "deposits", "provisions", "clearing", "custody"]
PERIODS = ["month_end", "quarter_end", "year_end", "daily_close"]
APPROVERS = ["controller", "treasurer", "auditor", "desk_head"]
CURRENCIES = ["gbp", "eur", "usd", "chf"]

FUNCTIONS = [
    '''def settle_{account}(book: Book, amount: Decimal) -> Entry:
    """Settle {account} at {period}; {approver} signs."""
    entry = post_entry(book, "{account}", {currency}(amount), period=Period.{PERIOD})
    return entry.confirm(approver=Role.{APPROVER})
''',
    '''def reverse_{account}(book: Book, entry_id: EntryId) -> Entry:
    """Reverse one {account} entry posted in error."""
    original = book.fetch(entry_id, account="{account}")
    return post_entry(book, "{account}", -original.amount, period=Period.{PERIOD}, reverses=entry_id)
''',
    '''def reconcile_{account}(book: Book, statement: Statement) -> Breaks:
    """Match {account} against the {currency} statement; breaks go to {approver}."""
    breaks = match_lines(book.lines("{account}", currency="{currency}"), statement.lines)
    escalate(breaks, to=Role.{APPROVER}, period=Period.{PERIOD})
    return breaks
''',
    '''def accrue_{account}(book: Book, rate: Decimal, days: int) -> Entry:
    """Accrue {account} interest for the {period} close."""
    amount = {currency}(book.balance("{account}") * rate * days / 365)
    return post_entry(book, "{account}", amount, period=Period.{PERIOD}).confirm(approver=Role.{APPROVER})
''',
]
HEADER = '''"""Halvard ledger: {account} routines ({period})."""
from decimal import Decimal

from halvard.ledger import Book, Entry, EntryId, Period, Role, post_entry
from halvard.recon import Breaks, Statement, escalate, match_lines
from halvard.units import {currency}

'''


def module(rng: random.Random) -> str:
    fields = {"account": rng.choice(ACCOUNTS), "period": rng.choice(PERIODS), "approver": rng.choice(APPROVERS),
              "currency": rng.choice(CURRENCIES)}
    fields.update(PERIOD=fields["period"].upper(), APPROVER=fields["approver"].upper())
    body = "\n\n".join(f.format(**fields) for f in rng.sample(FUNCTIONS, rng.randint(2, 4)))
    return HEADER.format(**fields) + "\n" + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)
    for i in range(args.count):
        with open(os.path.join(args.out, f"module_{i:04d}.py.txt"), "w", encoding="utf-8") as f:
            f.write(module(rng))


if __name__ == "__main__":
    main()
