"""The end-to-end demo's parts: a synthetic model zoo and a loopback file host that serves it."""
