"""One thin module per subcommand: options in, library call, rich output."""
