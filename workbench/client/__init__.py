"""Clients of a lab agent: the socket transport and ``Lab``, the one Python API."""
