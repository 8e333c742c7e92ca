"""The lab node's kernel objects other than eBPF: netns, veths, cgroups, processes, setup checks."""
