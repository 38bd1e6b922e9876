"""cowsim.clients — the ``cowsim`` command line and the Python client of ``cowsim serve``.

Importing it sets ``GRPC_VERBOSITY=ERROR`` unless the variable is set already: the level
gRPC documents as its default, which its C core (1.6x+) no longer applies to some of its
own lines — a failed TLS handshake would otherwise print an ``I…
ssl_transport_security.cc`` line on stderr beside the CLI's one-line error.  gRPC reads
the variable once, when it is first imported, so this happens here, before any module of
the package imports grpc.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
