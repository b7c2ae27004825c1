"""Command-line front door (typer + rich): parse, call the SDK/engine, render."""
