"""gpu-guardian: find idle cloud GPU instances, price them, warn about and stop them."""

__version__ = "0.1.0"
