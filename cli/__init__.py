"""The rsflow command-line interface."""
