"""The decoding flags' old home: they now live in `asr.cli.options` with every shared flag.

Kept as a thin alias for the modules that still import it from here (`asr.cli.evaluate`,
`asr.cli.transcribe_manifest`); TODO(issue 28): import from `asr.cli.options` and delete this.
"""

from __future__ import annotations

from asr.cli.options import add_decoding_arguments, decoding_options

__all__ = ["add_decoding_arguments", "decoding_options"]
