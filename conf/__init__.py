"""The Hydra configs (a package, so Hydra finds them when MAIST is installed)."""
