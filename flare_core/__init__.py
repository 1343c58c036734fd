"""FLARE Workbench core library: backdoor dataset purification (never imports streamlit)."""

__version__ = "0.1.0"

from flare_core.errors import FlareError  # noqa: F401
