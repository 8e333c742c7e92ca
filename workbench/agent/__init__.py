"""The lab agent: one process per lab that owns the datapath and serves the local API."""
