"""One module per command (``rayppo COMMAND``): each parses, builds, runs and cleans up."""
