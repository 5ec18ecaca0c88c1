"""Tables, plots and the report writer (`plad report`)."""
