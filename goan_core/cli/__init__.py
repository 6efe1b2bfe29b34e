"""The command line front end: `python -m goan_core generate|resume|inspect|make-tiny|demo|farm`."""

from .main import main

__all__ = ["main"]
