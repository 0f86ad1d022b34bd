"""moe-prefetch: the command-line entry that sits on top of traces, predictor, sim and reports."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("moe-prefetch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
