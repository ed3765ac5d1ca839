"""The outermost layer: the `modelsieve` command line (`api.cli`) and the HTTP API."""
