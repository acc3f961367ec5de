"""The on-device agent. Standard library + torch + the model code in the bundle; Python 3.8+."""
