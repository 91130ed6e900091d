"""The `jaxinterp` command line: the top of the dependency graph.

`jaxinterp_cli.main` parses and dispatches (`main.main` is the console script);
`jaxinterp_cli.commands` does each command's work with library calls (`converters`,
`jaxinterp`) and `jaxinterp_cli.tour` is `jaxinterp demo`. Nothing else imports this
package.
"""
