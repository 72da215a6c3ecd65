"""Data generators and loaders behind the public ``truncfast.data`` (the app layer's inputs)."""
