"""Dataset layouts (one module each) and the synthetic scan generator."""
