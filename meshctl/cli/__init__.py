"""The `meshctl` command line: thin Typer commands over the library."""
