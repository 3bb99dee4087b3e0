"""One module per CLI command group; each has ``register(subparsers)``.

A handler takes the parsed ``argparse.Namespace`` and returns the exit code: 0 success, 1 the thing
asked for failed or was invalid, 2 bad usage or invalid config. Only :mod:`router.cli` exits.
"""
