"""Lists of known-harmful models: the store, the matcher and signed exchange between platforms."""
