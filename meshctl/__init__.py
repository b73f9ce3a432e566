"""meshctl: scaling studies of recursive transformers and MeSH on the Pythia suite."""

__version__ = "0.1.0"
