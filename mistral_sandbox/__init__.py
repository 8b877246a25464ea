"""mistral-sandbox: run untrusted Mistral Python actions in isolated, limited children."""

__version__ = "0.1.0"
