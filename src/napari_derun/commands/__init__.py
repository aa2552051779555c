"""CLI subcommands: each module here defines ``HELP``, ``DESCRIPTION``, ``options(parser)``
and ``run(args)``; cli.py discovers them and makes their parsers."""
