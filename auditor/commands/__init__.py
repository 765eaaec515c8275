"""The ``flow-auditor`` commands, one module each (DESIGN §6).

Stage: front end. Each module owns its subparser (``add_parser``) and its handler (``cmd_*``, set as the
parser's ``func``): :mod:`~auditor.commands.replay`, :mod:`~auditor.commands.run` (the daemon, and the
daemon options ``demo`` shares), :mod:`~auditor.commands.demo`, :mod:`~auditor.commands.policies`
(``generate``, ``diff``), :mod:`~auditor.commands.matrix` (``check``) and :mod:`~auditor.commands.learn`
(``matrix learn``). :mod:`auditor.cli` wires them into one parser and runs the chosen handler.

Error policy: handlers raise :class:`~auditor.commands.common.UsageError` for a usage or input problem
(exit 2) and return the exit code otherwise; anything else they raise is a bug, which ``auditor.cli.main``
reports as an internal error (exit 3).
"""
