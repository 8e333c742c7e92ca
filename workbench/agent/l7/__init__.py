"""L7 (HTTP) policy and visibility through a transparent proxy run by the lab agent.

How a connection gets to the proxy (and why this mechanism):

1. The policy compiler gives every allow entry that carries ``toPorts[].rules.http``
   the proxy's port (``workbench.policy.compiler.DEFAULT_PROXY_PORT``) in the
   policy map.
2. from-container (TC ingress on the client's lxc, bpf/lib/l7.h): for a new
   TCP connection whose client EGRESS entry, or whose destination pod's
   INGRESS entry for (client identity, TCP, dport), carries a proxy port,
   ``bpf_sk_assign`` hands the packet to the proxy's listening socket
   (found with ``bpf_skc_lookup_tcp`` on 127.0.0.1:<port>), sets the
   TO_PROXY mark and emits REDIRECTED; the conntrack entry keeps the proxy
   port, so every later packet is assigned to the accepted socket.
3. The node netns routes marked packets locally (``ip rule fwmark 0x200/0xf00
   lookup 2004``, ``local 0.0.0.0/0 dev lo table 2004``), so the assigned
   socket receives them although their destination is a pod address.
4. The proxy's listener has IP_TRANSPARENT: the accepted socket's local
   address *is* the original destination, and its answers leave with it as
   source, passing the client's to-container as replies of the client's own
   connection. Nothing is rewritten.
5. Allowed requests go over an upstream connection the proxy opens from the
   node netns to the original destination, with SO_MARK = FROM_PROXY magic |
   client identity << 16; the destination's to-container takes the peer
   identity from that mark, so its L3/L4 check sees the real client (as in
   Cilium), not "host".

Why socket assignment rather than address rewriting (DNAT to the proxy and a
reverse translation for replies): no per-connection NAT state to keep or
expire, no checksum rewriting, the client keeps talking to exactly the
address it dialled and the backend's flows show the client identity; it is
also what Cilium does (``bpf_sk_assign`` replaced iptables TPROXY there).
Why the decision is made at the client's from-container: only TC *ingress*
may assign sockets, and the client's lxc is where a pod's packets enter the
node.

Clients in the lab's world netns enter the node through world0, where no
lxc program runs: ``l7_from_world`` (TC ingress on world0, same compile)
redirects their connections the same way, statelessly.

Limits: connections the node itself opens are not redirected; a pod that
reaches itself through its own service never leaves its netns (no datapath,
no proxy); the backend sees the node address 169.254.1.1 as the source of
proxied requests (the identity travels in the mark); connections already
redirected keep going through the proxy after a policy delete until they
close (conntrack keeps the proxy port; the proxy then allows every request),
new ones go direct; an agent restart closes the proxied connections of the
old agent.

The proxy serves all connections from one event loop with a bound on them
and deadlines on slow clients (:mod:`.proxy`, docs/safety.md).

Modules: :mod:`.http` (HTTP/1.1 framing), :mod:`.proxy` (the proxy),
:mod:`.stream` (its sockets: buffers and deadlines), :mod:`.flows` (L7 flow
rows), :mod:`.service` (agent wiring).
"""
