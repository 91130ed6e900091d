"""Classic circuit findings reproduced with jaxinterp's kernels, each a `jaxinterp`
subcommand with a report section and a summary JSON (see `common`): the logit lens and
direct logit attribution (`lens`), induction heads (`induction`), indirect object
identification (`ioi`) and sparse probing of MLP neurons (`probing`)."""
