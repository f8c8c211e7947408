"""The process's life after the start: drain on SIGTERM, reload on SIGHUP or a file change.

Shell module (a package of them, plus one core module).  :mod:`~eventgw.lifecycle.signals`
installs the signal handlers and watches a worker's supervisor,
:mod:`~eventgw.lifecycle.watch` polls the configuration file, and
:mod:`~eventgw.lifecycle.reload` (core) decides whether a new configuration can be
applied to a running process at all.  The service (:mod:`eventgw.service`) and the
``--workers`` supervisor (:mod:`eventgw.workers`) put them together.
"""
