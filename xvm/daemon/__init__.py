"""xvmd, the xvm host service (see :mod:`xvm.daemon.server`)."""
