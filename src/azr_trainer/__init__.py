"""AZR Trainer: grow a language model from your own books.

The library is the product; the CLI (cli.py), the REST API (server.py) and the web page
are thin layers over the same functions. See docs/ARCHITECTURE.md for the flow.
"""

__version__ = "0.1.0"
