"""Sub-commands of the `rnnlab` CLI; each module has register(subparsers, name) and sets args.func."""
