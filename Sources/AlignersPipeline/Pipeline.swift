// ZeroMQ transport, router and workers live here.
