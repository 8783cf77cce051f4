"""No figures for the multi-node test template."""
