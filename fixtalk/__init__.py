"""FixTalk / EDTalk one-shot talking heads."""

__version__ = "0.1.0"
