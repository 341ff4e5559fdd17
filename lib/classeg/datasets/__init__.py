"""Dataset layouts, one module each (lgg, figshare, folders) behind common.Layout, named in registry.LAYOUTS;
the synthetic scan generator is classeg.synthetic."""
