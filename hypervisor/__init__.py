"""Desktop providers: what the broker uses to start, stop and find desktops on hosts.

The contract and `provider_for` are in hypervisor/provider.py, the names providers go by in
hypervisor/registry.py. This file imports nothing, so importing a submodule loads no provider.
"""
