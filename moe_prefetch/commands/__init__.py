"""One module per ``moe-prefetch`` subcommand; see ``moe_prefetch.cli``."""
