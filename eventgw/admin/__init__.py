"""Operations: the admin listener (health, readiness, gRPC health, ``/metrics``) and
the Prometheus metrics every flow records.

Shell module (its parts are: :mod:`~eventgw.admin.state` and
:mod:`~eventgw.admin.labels` are core, the rest shell).
"""

from __future__ import annotations
