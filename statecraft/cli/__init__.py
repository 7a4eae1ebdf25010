"""The ``statecraft`` command line: parse, call one engine method, render.

Data goes to stdout (``--json`` on every command that shows data), messages
and progress to stderr. Every error is one ``error: …`` line on stderr; exit
codes are documented in :mod:`statecraft.cli.common` and docs/cli.md.
``--db`` (or ``$STATECRAFT_DB``) names the database on every command; a run
id may be given as any unique prefix of at least 4 characters.

The package, one module per audience, none importing another's private names:

- :mod:`.common`: errors and exit codes, shared options, output, run ids;
- :mod:`.runs`: operators' commands (start, status, list, approve, reject,
  cancel, retry, resume, worker, graph);
- :mod:`.audit`: reviewers' ``statecraft audit …``;
- :mod:`.keys`: approvers' signing keys, ``statecraft keys …``;
- ``statecraft serve`` comes from :mod:`statecraft.web.command`.

Importing it loads click and these modules only: the engine, SQLAlchemy and
rich load when a command runs (``statecraft --help`` in well under 0.3 s).
"""

from __future__ import annotations

import click

from ..web.command import serve
from .audit import audit
from .common import StatecraftGroup
from .keys import keys
from .runs import RUN_COMMANDS

__all__ = ["main"]


@click.group(cls=StatecraftGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="statecraft")
def main() -> None:
    """statecraft: run, approve and audit state-machine workflows of agents.

    \b
    Example:
      statecraft start machines/contract_review.py --input machines/samples/sample_msa.md
      statecraft status RUN_ID
      statecraft approve RUN_ID --by alice@example.com --digest DIGEST
      statecraft audit verify

    \b
    Exit codes: 0 done (or waiting for approval), 1 refused, 2 usage error,
    3 the run ended FAILED, 130 interrupted (the run keeps its checkpoint).
    """


for _command in (*RUN_COMMANDS, audit, keys, serve):
    main.add_command(_command)
