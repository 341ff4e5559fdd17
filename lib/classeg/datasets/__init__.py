"""Dataset layouts (one module each); the synthetic scan generator is classeg.synthetic."""
