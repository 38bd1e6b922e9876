"""cowsim.clients — the ``cowsim`` command line and (later) the Python client library."""
